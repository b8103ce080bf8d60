# syntax=docker/dockerfile:1
# Build: the same cargo build the README uses, in release mode.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin strata

# Runtime: slim, non-root, CA certificates for S3 over TLS.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/strata --create-home strata
COPY --from=build /src/target/release/strata /usr/local/bin/strata
COPY config/strata.toml /etc/strata/strata.toml
USER strata
WORKDIR /var/lib/strata
# Listening on all interfaces requires real JWT auth: set STRATA__AUTH__MODE=jwt and a key
# (e.g. STRATA__AUTH__HS256_SECRET or STRATA__AUTH__PUBLIC_KEY_FILES) at run time.
ENV STRATA__SERVER__HTTP_ADDR=0.0.0.0:8080 \
    STRATA__SERVER__FLIGHT_ADDR=0.0.0.0:50051 \
    STRATA__SERVER__DATA_DIR=/var/lib/strata \
    STRATA__STORAGE__WAREHOUSE=/var/lib/strata/warehouse
EXPOSE 8080 50051
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["curl", "-fsS", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/strata"]
CMD ["serve"]
