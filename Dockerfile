# txflow's runtime image: the txflow binary on a base with glibc, libgcc, OpenSSL 3 and CA
# certificates (distroless cc by default: no shell, no package manager), run as a non-root
# user, with a read-only root filesystem working (txflow writes nowhere but the data volume
# of `txflow dev`).
#
# The binary is built first and copied in: deploy/image/build builds it, lays out the build
# context (the binary and an empty data directory) and runs docker build.
# BASE names another base with the same libraries, e.g. one imported locally where no
# registry is reachable. To build from source inside Docker instead, see
# deploy/image/Dockerfile.source (docs/DEPLOYMENT.md).
ARG BASE=gcr.io/distroless/cc-debian12:nonroot
FROM ${BASE}

COPY txflow /usr/local/bin/txflow
# `txflow dev` keeps its log, store and API key here; owned by the runtime user.
COPY --chown=65532:65532 data /var/lib/txflow

USER 65532:65532
ENV TXFLOW_DEV__DATA_DIR=/var/lib/txflow \
    TXFLOW_DEV__BIND=0.0.0.0
VOLUME /var/lib/txflow
# 8080: the gateway's HTTP API; 9480: /metrics, /healthz, /readyz.
EXPOSE 8080 9480
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/txflow", "probe", "--ready"]
ENTRYPOINT ["/usr/local/bin/txflow"]
CMD ["dev"]
