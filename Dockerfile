# driftless — multi-stage build: compile with the Rust toolchain, run on a
# small Debian with only what the binary needs at run time (git for
# `file://`/local fetches, an ssh client for `ssh://` repos, CA certificates
# for `https://`). Build: docker build -t driftless .
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs && echo 'fn main() {}' > benches/render.rs \
    && cargo build --release --locked \
    && rm -rf src benches
COPY src ./src
COPY policies ./policies
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin driftless \
    && strip target/release/driftless

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git openssh-client \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 driftless \
    && useradd --system --uid 10001 --gid driftless --home-dir /var/lib/driftless --create-home driftless
COPY --from=build /src/target/release/driftless /usr/local/bin/driftless
USER 10001:10001
WORKDIR /var/lib/driftless
ENV DRIFTLESS_CACHE_DIR=/var/lib/driftless/cache
# The daemon's listener (webhook, /healthz, /readyz, /metrics, /api/v1, the
# status page) when its config says `listen: 0.0.0.0:8088`, as
# deploy/kubernetes/configmap.yaml does.
EXPOSE 8088
# Healthy while the daemon answers its API on that port (reads from loopback
# need no token). Another `listen:` port needs its own HEALTHCHECK.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/driftless", "status", "--daemon", "http://127.0.0.1:8088"]
ENTRYPOINT ["/usr/local/bin/driftless"]
CMD ["--help"]
