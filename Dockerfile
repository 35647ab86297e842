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

# The embedded SQLite database lives in the volume; set
# TRELLIS_DATABASE_URL=postgres://... to use PostgreSQL instead.
ENV TRELLIS_DATABASE_URL=sqlite:/var/lib/trellis/trellis.db
# Listen on every interface so the published port works. Without a token
# the server refuses a non-loopback address (CONTRACT §5): run with
#   docker run -p 8080:8080 -e TRELLIS_API_TOKEN=<secret> trellis
# or, on a trusted network only, append --insecure-no-auth.
ENV TRELLIS_ADDR=0.0.0.0:8080
EXPOSE 8080

ENTRYPOINT ["trellis", "serve"]
