# syntax=docker/dockerfile:1

# Build a static trellis binary.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -buildvcs=false \
        -ldflags "-s -w -X github.com/trellis-dag/trellis/cli.version=${VERSION}" \
        -o /out/trellis ./cmd/trellis

# Runtime: Debian slim rather than distroless, because Shell tasks run
# /bin/sh and the example DAGs use coreutils, tar and gzip.
FROM debian:trixie-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/trellis --create-home trellis
COPY --from=build /out/trellis /usr/local/bin/trellis

USER 10001:10001
WORKDIR /var/lib/trellis
VOLUME /var/lib/trellis

# The embedded SQLite database (the default sqlite:trellis.db) lives in
# the volume, the working directory. For PostgreSQL, keep the URL out of
# the environment, which tasks running as the same user could read in
# /proc: give it as a secret file,
#   docker run -v /etc/trellis/db-url:/run/secrets/db-url:ro -e TRELLIS_DATABASE_URL_FILE=/run/secrets/db-url …
# (or TRELLIS_DATABASE_URL=postgres://… when that is no concern).
# Listen on every interface so the published port works. Without a token
# the server refuses a non-loopback address (CONTRACT §5): run with
#   docker run -p 8080:8080 -v /etc/trellis/api-token:/run/secrets/api-token:ro -e TRELLIS_API_TOKEN_FILE=/run/secrets/api-token trellis
# or, on a trusted network only, append --insecure-no-auth.
ENV TRELLIS_ADDR=0.0.0.0:8080
EXPOSE 8080

ENTRYPOINT ["trellis", "serve"]
