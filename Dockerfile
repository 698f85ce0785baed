# The mirrortrace agent image: what runs in the cluster, next to the target.
#
#   docker build -t ghcr.io/mirrortrace/agent:0.1.0 .
#
# Standard-library Python only (the agent never needs anything from PyPI) and
# iptables for the steal and mirror modes. The agent is the container's main
# process; mirrortrace attaches to its stdin/stdout (see supervisor/k8s_link.py),
# so it speaks only when spoken to (--attached) and exits when stdin closes.
FROM python:3.12-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/*

# In site-packages, so `python3 -I` (no PYTHONPATH, no cwd on sys.path) finds it.
COPY agent_image /usr/local/lib/python3.12/site-packages/agent_image

# Not root unless asked: mirrortrace runs the agent as the target's own user
# when it knows it, and as root only to read a target whose user it does not know.
USER 65532:65532

ENTRYPOINT ["python3", "-I", "-m", "agent_image"]
CMD ["--attached"]
