"""Kubernetes: a run's shards as an Indexed Job (``vlmd launch --kubernetes`` prints it).

Completion index ``i`` runs ``vlmd-agent --shard i/N`` against vlmd's URL; the token comes from a
Secret, never from the pods' spec: by default one the printed manifest holds, with a token minted
for this run (it writes that run's events only; `secret`), else one the operator made. A failed
pod is replaced (``backoffLimit``) and its agent resumes from the first item vlmd does not hold
as completed. The manifest is JSON, which ``kubectl apply -f -`` reads.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from vlmd.config import Config
from vlmd.launch.launcher import LaunchSpec

INDEX_ENV = "JOB_COMPLETION_INDEX"
INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
GPU_RESOURCE = "nvidia.com/gpu"
RETRIES_PER_SHARD = 2


def job_name(run: str) -> str:
    """A DNS-1123 name for the run's Job: ``vlmd-`` and the run id, lower case, <= 63 chars."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"vlmd-{run}".lower())[:63]
    return name.strip("-")


def secret_name(run: str) -> str:
    """The name of the Secret that holds the run's token."""
    return job_name(run)[:57].rstrip("-") + "-token"


def secret(spec: LaunchSpec, token: str) -> dict[str, Any]:
    """The Secret holding `token` (the run's own) under the key ``token``."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": secret_name(spec.run), "labels": _labels(spec.run),
                         "annotations": {"vlmd/run": spec.run}},
            "stringData": {"token": token}}


def with_secret(job: dict[str, Any], secret_doc: dict[str, Any]) -> dict[str, Any]:
    """The Secret and the Job as one ``v1 List`` (``kubectl apply -f -`` creates both)."""
    return {"apiVersion": "v1", "kind": "List", "items": [secret_doc, job]}


def _labels(run: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "vlmd-agent", "app.kubernetes.io/part-of": "vlmd",
            "vlmd/run": job_name(run).removeprefix("vlmd-")}


def manifest(spec: LaunchSpec, url: str, config: Config, *, image: str,
             secret: str = "vlmd-token", secret_key: str = "token",
             gpus_per_shard: int = 1) -> dict[str, Any]:
    """The Indexed Job that runs `spec`'s shards in `image` (which must provide ``vlmd-agent``).

    Every pod requests `gpus_per_shard` ``nvidia.com/gpu`` (none when 0); the dataset path is
    the one the pods see (mount it into the image or a volume).
    """
    args = replace(spec, shards=1).agent_args(url, 0, config)
    if spec.shards > 1:
        args += ["--shard", f"$({INDEX_ENV})/{spec.shards}"]  # expanded by the kubelet
    labels = _labels(spec.run)
    gpus = {GPU_RESOURCE: gpus_per_shard}
    container: dict[str, Any] = {
        "name": "agent", "image": image, "command": ["vlmd-agent"], "args": args,
        "env": [
            {"name": "VLMD_TOKEN",
             "valueFrom": {"secretKeyRef": {"name": secret, "key": secret_key}}},
            {"name": INDEX_ENV, "valueFrom": {"fieldRef": {"fieldPath": INDEX_ANNOTATION}}},
            {"name": "VLMD_HOME", "value": "/tmp/vlmd"},
            {"name": "PYTHONSAFEPATH", "value": "1"},  # as -P, for the agent and its wrapper
        ],
        "resources": {"requests": gpus, "limits": gpus} if gpus_per_shard else {},
    }
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name(spec.run), "labels": labels,
                     "annotations": {"vlmd/run": spec.run}},
        "spec": {
            "completionMode": "Indexed", "completions": spec.shards,
            "parallelism": spec.shards, "backoffLimit": RETRIES_PER_SHARD * spec.shards,
            "template": {"metadata": {"labels": labels},
                         "spec": {"restartPolicy": "Never", "containers": [container]}},
        },
    }
