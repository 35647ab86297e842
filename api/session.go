package api

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The web UI keeps the API token in a session cookie instead of handing
// it to scripts. The cookie is HttpOnly and SameSite=Strict, and holds a
// random nonce with its MAC under the token (so it stays valid for as long
// as the token does, and no server state is needed). The API accepts it
// for safe methods (GET, HEAD) and, for the others, only with the
// session's CSRF token in the CSRFHeader header: a page of another site
// can neither read that token nor set the header without a CORS
// preflight, which is refused.
const (
	// SessionCookie is the name of the UI's session cookie.
	SessionCookie = "trellis_session"
	// CSRFHeader carries the CSRF token of the session on unsafe requests.
	CSRFHeader = "X-Trellis-CSRF"
	// SessionMaxAge is how long the session cookie lives.
	SessionMaxAge = 30 * 24 * time.Hour
)

// Sessions issues and checks the UI's session cookies for one API token.
type Sessions struct{ key []byte }

// NewSessions returns the sessions of token (which must not be empty).
func NewSessions(token string) *Sessions {
	k := sha256.Sum256([]byte("trellis ui session\x00" + token))
	return &Sessions{key: k[:]}
}

func (s *Sessions) mac(kind, nonce string) string {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(kind + "\x00" + nonce))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// New returns a new session cookie for r's connection.
func (s *Sessions) New(r *http.Request) *http.Cookie {
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	nonce := base64.RawURLEncoding.EncodeToString(b)
	return &http.Cookie{
		Name: SessionCookie, Value: nonce + "." + s.mac("session", nonce), Path: "/",
		MaxAge: int(SessionMaxAge / time.Second), HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: r.TLS != nil,
	}
}

// Expired returns the cookie that removes the session.
func (s *Sessions) Expired(r *http.Request) *http.Cookie {
	return &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil}
}

// Check returns the CSRF token of r's session cookie, and false when r has
// no valid session.
func (s *Sessions) Check(r *http.Request) (csrf string, ok bool) {
	c, err := r.Cookie(SessionCookie)
	if err != nil {
		return "", false
	}
	nonce, mac, found := strings.Cut(c.Value, ".")
	if !found || nonce == "" || !hmac.Equal([]byte(mac), []byte(s.mac("session", nonce))) {
		return "", false
	}
	return s.mac("csrf", nonce), true
}

// valid reports whether r carries a valid session cookie.
func (s *Sessions) valid(r *http.Request) bool {
	_, ok := s.Check(r)
	return ok
}

// Allows reports whether r may use its session cookie: a valid session,
// and for unsafe methods the session's CSRF token in CSRFHeader.
func (s *Sessions) Allows(r *http.Request) bool {
	csrf, ok := s.Check(r)
	if !ok {
		return false
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return true
	}
	got := r.Header.Get(CSRFHeader)
	return got != "" && hmac.Equal([]byte(got), []byte(csrf))
}

// crossSite reports whether an unsafe request comes from a page of another
// site: browsers say so in Sec-Fetch-Site, or in an Origin whose host is
// not the request's. Clients that are not browsers send neither.
func crossSite(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	switch r.Header.Get("Sec-Fetch-Site") {
	case "cross-site", "same-site":
		return true
	case "same-origin", "none":
		return false
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return false
	}
	u, err := url.Parse(o)
	return err != nil || !strings.EqualFold(u.Host, r.Host)
}
