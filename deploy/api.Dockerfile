# syntax=docker/dockerfile:1
# The Tasklane API image. Build context: the repository root.
#   docker build -f deploy/api.Dockerfile -t tasklane-api .
# (deploy/compose.yaml builds it the same way.)
#
# Stages: chef (the toolchain + cargo-chef) -> planner (recipe.json: the dependency graph
# only) -> builder (dependencies compiled in their own layer, which stays cached until
# Cargo.toml/Cargo.lock change; then the workspace) -> a distroless runtime.

# Same Rust release as the project's CI machine, so `--locked` resolves the same way. Bookworm,
# so the binary's glibc matches the distroless debian12 runtime below.
FROM rust:1.95.0-slim-bookworm AS chef
WORKDIR /src
RUN cargo install cargo-chef --locked --version 0.1.78

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --bin tasklane --recipe-path recipe.json
COPY . .
# The very build command CI runs.
RUN cargo build --release --locked --bin tasklane \
    && install -D -m 0755 target/release/tasklane /out/tasklane

# glibc + libgcc and nothing else: no shell, no package manager. distroless publishes no
# point-release tags; debian12 is the pinned part. Pin the digest too when releasing:
#   docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/tasklane /usr/local/bin/tasklane
# distroless's "nonroot" user.
USER 65532:65532
ENV TASKLANE_LISTEN=0.0.0.0:5000 \
    TASKLANE_LOG_FORMAT=json
EXPOSE 5000
# `tasklane healthcheck` GETs /api/health/live on TASKLANE_LISTEN; exit 0 = healthy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=40s --retries=3 \
    CMD ["/usr/local/bin/tasklane", "healthcheck"]
# `docker run IMAGE` serves; `docker run IMAGE migrate` / `demo-data` run those subcommands.
ENTRYPOINT ["/usr/local/bin/tasklane"]
