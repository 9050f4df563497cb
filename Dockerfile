# Multi-stage build of the one `parley` binary.
# Stage 1 builds with the Rust toolchain; stage 2 is a slim Debian with the binary only.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin parley && cp target/release/parley /parley

FROM debian:bookworm-slim
# Unpinned on purpose: the distribution's current security updates are what we want.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/parley --create-home parley
COPY --from=build /parley /usr/local/bin/parley
USER 10001
WORKDIR /var/lib/parley
ENV PARLEY_DATA_DIR=/var/lib/parley HOST=0.0.0.0 PORT=8080 LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD ["curl", "-fsS", "http://127.0.0.1:8080/health"]
ENTRYPOINT ["parley"]
CMD ["serve"]
