"""Pure checks of the values a pipeline names: storage URLs, Kubernetes names, label values,
image references, quantities. stdlib only.

Each returns None when the value is fine, else the problem in a few words ("... is not ..."),
which the caller prefixes with the key and value it checked: the CLI (`submit`, `config show`)
and the operator's admission (the pydantic models of eve_operator.spec and eve_trainer.config)
run the same checks, so a hand-written EvePipeline is refused for the same reasons.
"""

from __future__ import annotations

import re

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
# the reference grammar of distribution/reference (docker): [host[:port]/]path[:tag][@digest]
_IMAGE = re.compile(
    r"^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$")
_QUANTITY = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[mkMGTPE])?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def dns_label_problem(value: str, max_len: int = 63) -> str | None:
    """Namespaces, Service and Kueue queue names (RFC 1123 label)."""
    if not value:
        return "is empty"
    if len(value) > max_len or not _DNS_LABEL.match(value):
        return (f"is not a valid Kubernetes name (at most {max_len} lower-case letters, digits and '-', "
                "starting and ending with a letter or digit)")
    return None


def dns_subdomain_problem(value: str, max_len: int = 253) -> str | None:
    """Secrets, PriorityClasses, ServiceAccounts (RFC 1123 subdomain)."""
    if not value:
        return "is empty"
    if len(value) > max_len or not _DNS_SUBDOMAIN.match(value):
        return (f"is not a valid Kubernetes name (at most {max_len} lower-case letters, digits, '-' and '.', "
                "starting and ending with a letter or digit)")
    return None


def label_value_problem(value: str) -> str | None:
    """Values of Kubernetes labels (and node-selector values such as nvidia.com/gpu.product)."""
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        return ("is not a valid Kubernetes label value (at most 63 letters, digits, '-', '_' and '.', "
                "starting and ending with a letter or digit)")
    return None


def image_problem(value: str) -> str | None:
    """A container image reference: [registry[:port]/]name[:tag][@sha256:digest]."""
    if not value:
        return "is empty"
    if len(value) > 4096 or not _IMAGE.match(value):
        return ("is not a valid image reference ([registry[:port]/]repository[:tag][@sha256:digest], "
                "the repository in lower case, e.g. ghcr.io/eve-platform/trainer:0.1.0)")
    return None


def quantity_problem(value: str) -> str | None:
    """A Kubernetes resource quantity: 32, 500m, 400Gi, 1e3."""
    if not _QUANTITY.match(value or ""):
        return "is not a Kubernetes quantity (e.g. 32, 500m, 64Gi, 400G)"
    return None


def bucket_problem(bucket: str) -> str | None:
    """S3 bucket-name rules (AWS's, which MinIO, Ceph and SeaweedFS follow)."""
    if not bucket:
        return "has no bucket (expected s3://bucket/prefix)"
    if (not _BUCKET.match(bucket) or ".." in bucket or _IPV4.match(bucket)
            or bucket.startswith("xn--") or bucket.endswith("-s3alias")):
        return (f"has the bucket {bucket!r}, which is not a valid S3 bucket name (3-63 lower-case letters, digits, "
                "'.' and '-', starting and ending with a letter or digit)")
    return None


def location_problem(value: str, *, need_key: bool = False, s3_only: bool = False) -> str | None:
    """A storage location: s3://bucket/prefix, file://path or an absolute local path.

    need_key: the location is an object or folder (init_from, a tokenizer), not a bucket root.
    s3_only: only an object store will do (a cluster's output).
    """
    if not value:
        return "is empty"
    if _CONTROL.search(value):
        return "contains a control character (a newline or tab)"
    scheme, sep, rest = value.partition("://")
    if not sep:
        if value.startswith(("/", "~")) and not s3_only:
            return None
        if value.startswith("s3:") or value.startswith("file:"):
            return "is not a URL (expected s3://bucket/prefix or file:///path)"
        return ("is neither a URL nor an absolute path (expected s3://bucket/prefix, file:///path or /path)"
                if not s3_only else "is not an s3:// URL (expected s3://bucket/prefix)")
    scheme = scheme.lower()
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        if problem := bucket_problem(bucket):
            return problem
        if need_key and not key.strip("/"):
            return "names a bucket but no object or folder in it (expected s3://bucket/path)"
        return None
    if scheme == "file" and not s3_only:
        return None if rest.strip("/") or rest == "/" else "has no path (expected file:///path)"
    allowed = "s3://" if s3_only else "s3:// or file://"
    return f"has the scheme {scheme}://, expected {allowed} (an object store, or a local folder)"


def http_url_problem(value: str) -> str | None:
    """An endpoint URL: http(s)://host[:port][/path]."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest.split("/", 1)[0] or _CONTROL.search(value):
        return "is not an http(s):// URL (e.g. http://seaweedfs:8333)"
    return None


__all__ = ["dns_label_problem", "dns_subdomain_problem", "label_value_problem", "image_problem",
           "quantity_problem", "bucket_problem", "location_problem", "http_url_problem"]
