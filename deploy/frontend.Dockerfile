# syntax=docker/dockerfile:1
# The web UI and reverse proxy image: the frontend/ files plus nginx's config rendered from
# deploy/nginx/nginx.conf.template (the file the process-level twin also runs).
# Build context: the repository root.
#   docker build -f deploy/frontend.Dockerfile -t tasklane-nginx .

# nginx-unprivileged: the official nginx build, running as uid 101 and listening on 8080, so the
# container needs no capability and no root.
FROM nginxinc/nginx-unprivileged:1.28.0-alpine

USER 0:0
COPY deploy/nginx/nginx.conf.template deploy/nginx/render.sh /opt/tasklane-nginx/
# Our nginx.conf replaces the image's and includes nothing from conf.d; removing default.conf
# also turns the image's entrypoint scripts (which edit it) into no-ops on a read-only root.
RUN sh /opt/tasklane-nginx/render.sh --profile container > /etc/nginx/nginx.conf \
    && rm -f /etc/nginx/conf.d/default.conf \
    && rm -rf /usr/share/nginx/html/*
COPY --chown=root:root frontend/ /usr/share/nginx/html/
RUN chmod -R a+rX,go-w /usr/share/nginx/html

USER 101:101
# Fails the build if the rendered config is invalid for this nginx version.
RUN ["nginx", "-t", "-q"]
EXPOSE 8080
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/healthz"]
CMD ["nginx", "-g", "daemon off;"]
