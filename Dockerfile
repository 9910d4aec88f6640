# clipscope in a container, for Kubernetes Indexed Jobs and other schedulers
# (deploy/kubernetes/classify-indexed-job.yaml; docs/scale.md).
#   docker build -t clipscope .
#   docker run --rm -v "$PWD:/data" clipscope classify /data/photos --labels "cat,dog"
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# A C compiler for the JPEG decoder comes with the image.
RUN cargo build --release --locked --bin clipscope

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/clipscope /usr/local/bin/clipscope
# Models and embeddings are cached here: mount a volume to keep them between pods.
ENV CLIPSCOPE_CACHE=/cache
ENTRYPOINT ["clipscope"]
