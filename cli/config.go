package cli

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/trellis-dag/trellis/api"
	"github.com/trellis-dag/trellis/store"
)

// Config is the configuration every command shares, from the root's
// persistent flags with environment variables as fallbacks (CONTRACT §4).
// A flag given on the command line wins over its variable; the variable
// wins over the default.
type Config struct {
	// DatabaseURL is postgres://… or sqlite:PATH.
	DatabaseURL string
	// Addr is the host:port the API listens on.
	Addr string
	// Workers is the number of worker processes (at least 1).
	Workers int
	// APIToken, when set, is required as a Bearer token by the API.
	APIToken string
	// LogLevel and LogFormat ("text" or "json") shape Logger.
	LogLevel  slog.Level
	LogFormat string
}

// Defaults of the configuration.
const (
	defaultDatabaseURL = "sqlite:trellis.db"
	defaultAddr        = "127.0.0.1:8080"
)

// Flag names and their environment variables.
const (
	flagDatabaseURL = "database-url"
	flagAddr        = "addr"
	flagWorkers     = "workers"
	flagAPIToken    = "api-token"
	flagLogLevel    = "log-level"
	flagLogFormat   = "log-format"
	// fileSuffix makes the flag (and variable) that reads a secret
	// setting from a file: --database-url-file, TRELLIS_API_TOKEN_FILE.
	fileSuffix = "-file"
)

// secretSettings are the settings that may also be read from a file
// (--NAME-file, TRELLIS_NAME_FILE), so the secret is in neither the
// command line nor the environment of the process, which processes of
// the same user can read in /proc.
var secretSettings = []string{flagDatabaseURL, flagAPIToken}

// configEnv maps each configuration flag to its environment variable.
var configEnv = []struct{ flag, env string }{
	{flagDatabaseURL, "TRELLIS_DATABASE_URL"},
	{flagAddr, "TRELLIS_ADDR"},
	{flagWorkers, "TRELLIS_WORKERS"},
	{flagAPIToken, "TRELLIS_API_TOKEN"},
	{flagLogLevel, "TRELLIS_LOG_LEVEL"},
	{flagLogFormat, "TRELLIS_LOG_FORMAT"},
}

// addConfigFlags defines the configuration flags on fs (the root's
// persistent flags).
func addConfigFlags(fs *pflag.FlagSet) {
	fs.String(flagDatabaseURL, defaultDatabaseURL,
		"database: postgres://user:pass@host:5432/db or sqlite:PATH (env TRELLIS_DATABASE_URL)")
	fs.String(flagAddr, defaultAddr, "host:port the API listens on (env TRELLIS_ADDR)")
	fs.Int(flagWorkers, runtime.NumCPU(), "worker processes; the default is the CPU count (env TRELLIS_WORKERS)")
	fs.String(flagAPIToken, "", "Bearer token the API requires; empty = no auth, loopback addresses only (env TRELLIS_API_TOKEN)")
	fs.String(flagLogLevel, "info", "log level: debug, info, warn or error (env TRELLIS_LOG_LEVEL)")
	fs.String(flagLogFormat, "text", "log format: text or json (env TRELLIS_LOG_FORMAT)")
	fs.String(flagDatabaseURL+fileSuffix, "", "read --database-url from this file (env TRELLIS_DATABASE_URL_FILE), e.g. a systemd or Docker credential")
	fs.String(flagAPIToken+fileSuffix, "", "read --api-token from this file (env TRELLIS_API_TOKEN_FILE)")
}

// envOf returns the environment variable of a configuration flag.
func envOf(flag string) string {
	for _, b := range configEnv {
		if b.flag == flag {
			return b.env
		}
	}
	return ""
}

// resolveSecretFiles sets each secret setting from its file when one is
// given: --NAME-file unless --NAME is given, else TRELLIS_NAME_FILE
// unless TRELLIS_NAME is set. A value and a file at the same level are a
// usage error. given says which flags were on the command line.
func resolveSecretFiles(fs *pflag.FlagSet, given map[string]bool, lookupEnv func(string) (string, bool), source map[string]string) error {
	for _, name := range secretSettings {
		fileFlag, env := name+fileSuffix, envOf(name)
		fileEnv := env + "_FILE"
		path, from := "", ""
		switch {
		case given[name] && given[fileFlag]:
			return usagef("give --%s or --%s, not both", name, fileFlag)
		case given[name]:
			continue
		case given[fileFlag]:
			path, _ = fs.GetString(fileFlag)
			from = "--" + fileFlag
		case lookupEnv != nil:
			v, vok := lookupEnv(env)
			f, fok := lookupEnv(fileEnv)
			if !fok || f == "" {
				continue
			}
			if vok && v != "" {
				return usagef("set environment variable %s or %s, not both", env, fileEnv)
			}
			path, from = f, "environment variable "+fileEnv
		default:
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return usagef("%s: %v", from, err)
		}
		v := strings.TrimSpace(string(b))
		if v == "" {
			return usagef("%s: file %s is empty", from, path)
		}
		if err := fs.Set(name, v); err != nil {
			return usagef("%s: %v", from, err)
		}
		source[name] = from
	}
	return nil
}

// resolveConfig fills unset flags of fs from the environment and checks
// the values. Errors are usage errors naming the flag or the variable.
func resolveConfig(fs *pflag.FlagSet, lookupEnv func(string) (string, bool)) (Config, error) {
	source := map[string]string{} // flag -> where its value came from, for errors
	given := map[string]bool{}
	for _, name := range secretSettings {
		given[name] = fs.Changed(name)
		given[name+fileSuffix] = fs.Changed(name + fileSuffix)
	}
	for _, b := range configEnv {
		source[b.flag] = "--" + b.flag
		if fs.Changed(b.flag) || lookupEnv == nil {
			continue
		}
		v, ok := lookupEnv(b.env)
		if !ok || v == "" {
			continue
		}
		if err := fs.Set(b.flag, v); err != nil {
			return Config{}, usagef("environment variable %s=%q: %v", b.env, v, err)
		}
		source[b.flag] = "environment variable " + b.env
	}
	if err := resolveSecretFiles(fs, given, lookupEnv, source); err != nil {
		return Config{}, err
	}

	var cfg Config
	var err error
	get := func(name string) string {
		if err != nil {
			return ""
		}
		var s string
		s, err = fs.GetString(name)
		return s
	}
	cfg.DatabaseURL = get(flagDatabaseURL)
	cfg.Addr = get(flagAddr)
	cfg.APIToken = get(flagAPIToken)
	level := get(flagLogLevel)
	cfg.LogFormat = get(flagLogFormat)
	if err != nil {
		return Config{}, fmt.Errorf("read configuration flags: %w", err)
	}
	if cfg.Workers, err = fs.GetInt(flagWorkers); err != nil {
		return Config{}, fmt.Errorf("read configuration flags: %w", err)
	}

	if cfg.DatabaseURL == "" {
		return Config{}, usagef("%s is empty (want postgres://… or sqlite:PATH)", source[flagDatabaseURL])
	}
	if cfg.Addr == "" {
		return Config{}, usagef("%s is empty (want host:port)", source[flagAddr])
	}
	if err := api.CheckToken(cfg.APIToken); err != nil {
		return Config{}, usagef("%s: %v", source[flagAPIToken], err)
	}
	if cfg.Workers < 1 {
		return Config{}, usagef("%s must be at least 1, got %d", source[flagWorkers], cfg.Workers)
	}
	if err := cfg.LogLevel.UnmarshalText([]byte(level)); err != nil {
		return Config{}, usagef("%s: %q is not a log level (want debug, info, warn or error)", source[flagLogLevel], level)
	}
	if cfg.LogFormat != "text" && cfg.LogFormat != "json" {
		return Config{}, usagef("%s: %q is not a log format (want text or json)", source[flagLogFormat], cfg.LogFormat)
	}
	return cfg, nil
}

// Logger returns a logger writing to w at the configured level and format.
func (c Config) Logger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.LogLevel}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// String describes the configuration without the API token's value.
func (c Config) String() string {
	token := "unset"
	if c.APIToken != "" {
		token = "set"
	}
	return fmt.Sprintf("database-url=%s addr=%s workers=%s api-token=%s log-level=%s log-format=%s",
		store.RedactURL(c.DatabaseURL), c.Addr, strconv.Itoa(c.Workers), token, c.LogLevel, c.LogFormat)
}
