# syntax=docker/dockerfile:1
# Build stage: the release build of exactly the sources CI tests
# (`cargo build --release --locked`, as `cargo run --release` in the README).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
# The admin console's committed build, embedded into the binary (src/console).
COPY console/dist ./console/dist
# Cargo reads every target the manifest declares, benches and tests included.
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin strata

# Runtime stage: slim, non-root, CA certificates for S3 over TLS, curl for the healthcheck.
FROM debian:bookworm-slim
# Security updates of these two packages should flow in on rebuild; pinning Debian point
# versions would break the build whenever the mirror moves on.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 strata \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/strata --create-home strata
COPY --from=build /src/target/release/strata /usr/local/bin/strata
COPY config/strata.toml /etc/strata/strata.toml
USER 10001:10001
WORKDIR /var/lib/strata
# Configuration: /etc/strata/strata.toml (mount your own over it), then STRATA__SECTION__KEY
# environment variables. Listening on all interfaces requires real JWT auth: set
# STRATA__AUTH__MODE=jwt and a key (STRATA__AUTH__HS256_SECRET, or public keys / JWKS).
ENV STRATA_CONFIG=/etc/strata/strata.toml \
    STRATA__SERVER__HTTP_ADDR=0.0.0.0:8080 \
    STRATA__SERVER__FLIGHT_ADDR=0.0.0.0:50051 \
    STRATA__SERVER__DATA_DIR=/var/lib/strata \
    STRATA__STORAGE__WAREHOUSE=/var/lib/strata/warehouse
VOLUME ["/var/lib/strata"]
EXPOSE 8080 50051
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["curl", "-fsS", "http://127.0.0.1:8080/healthz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/strata"]
CMD ["serve"]
