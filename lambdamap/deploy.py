"""Create, update, inspect and remove what runs lambdamap on AWS: bucket, role, layer, function.

Every step looks before it leaps, so ``deploy`` is idempotent: run twice with nothing changed, the
second run changes nothing (and each step says ``unchanged``). What gets made:

* the deployment's signing key (:mod:`lambdamap.signing`), saved in the client's config file and
  given to the function in its environment, unless one is configured already;
* the S3 bucket (kept unless ``destroy(delete_bucket=True)``);
* an IAM role for the function with one inline policy, least privilege: objects below
  ``s3://BUCKET/PREFIX/`` (get, put, delete), listing the bucket only under that prefix, and
  writing to the function's own log group; nothing else;
* the layer (``runtime_layer/build.py``: the client's own package versions, built for the
  runtime's platform), published only when its content hash is new;
* the function: runtime ``python3.X`` of the client, handler ``runtime_layer.handler.handler``,
  with the lambdamap, wire-format and Python versions in its environment and tags, and the
  record of the runtime the layer holds (:data:`lambdamap.versions.RECORD_ENV`: Python, glibc,
  the versions of the packages results depend on and of the requirements asked for, and any
  drift from the client's); or, with ``image_uri``, a container-image function (no record: the
  client asks the runtime itself). Lambda's own retries of failed asynchronous invocations are
  turned off: the executor retries, bounded.

The record lives in the function's environment rather than in an object in the bucket: the client
already reads the function's configuration when it starts (no extra request, no extra
permission), and it changes together with the function in one ``UpdateFunctionConfiguration``, so
it cannot go stale apart from it. It is a few hundred bytes of compact JSON; deploy refuses an
environment over Lambda's 4 KB. What the record cannot see (a layer swapped by hand), the
runtime's own answer to the client's probe can (:mod:`lambdamap.versions`).

Before anything is built, :func:`preflight` checks what needs no build: a bucket configured, a
region, credentials that AWS accepts, a bucket that is this account's (or free to create) in that
region, and that the deployer may read the role, function and layer (docs/aws.md lists the
permissions).

A freshly created role takes seconds to become assumable by Lambda: ``CreateFunction`` fails with
``InvalidParameterValueException`` meanwhile, and is retried with back-off for up to two minutes.
The control-plane clients keep botocore's standard retries (3 attempts on throttling and 5xx);
that is the only retry loop around these calls, apart from the role wait, which botocore does not
retry.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

from . import __version__, signing, versions, wire
from .config import Settings, save_setting

log = logging.getLogger(__name__)

HANDLER = "runtime_layer.handler.handler"
POLICY_NAME = "lambdamap-access"
MANIFEST = "lambdamap_function.json"  # the function's own code: a manifest (the code is the layer)
DEPLOY_PREFIX = "_deploy/"             # below the prefix: uploaded layer zips
ROLE_WAIT_SECONDS = 120.0
#: Lambda's limit for all of a function's environment variables together.
ENVIRONMENT_LIMIT_BYTES = 4096
_CREDENTIAL_ERRORS = {"InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken",
                      "ExpiredTokenException", "UnrecognizedClientException", "InvalidAccessKeyId",
                      "AuthFailure", "InvalidToken"}
_DENIED = {"AccessDenied", "AccessDeniedException", "403"}
TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                   "Action": "sts:AssumeRole"}],
}


def runtime_name() -> str:
    """The Lambda runtime matching this client's Python, e.g. ``python3.11``."""
    return f"python{wire.python_version()}"


def client_versions() -> dict[str, str]:
    """What the function must agree with; stored in its environment and tags."""
    return {"LAMBDAMAP_VERSION": __version__, "LAMBDAMAP_WIRE_VERSION": str(wire.WIRE_VERSION),
            "LAMBDAMAP_PYTHON": wire.python_version()}


def role_policy(bucket: str, prefix: str, log_group_arn: str, partition: str = "aws") -> dict:
    """The function's only permissions: its prefix of the bucket and its own log group."""
    prefix = prefix.strip("/")
    keys = f"{prefix}/*" if prefix else "*"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "JobObjects", "Effect": "Allow",
             "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
             "Resource": f"arn:{partition}:s3:::{bucket}/{keys}"},
            # Without ListBucket a missing key reads as 403 instead of 404.
            {"Sid": "ListJobPrefix", "Effect": "Allow", "Action": "s3:ListBucket",
             "Resource": f"arn:{partition}:s3:::{bucket}",
             "Condition": {"StringLike": {"s3:prefix": [keys]}}},
            {"Sid": "OwnLogGroup", "Effect": "Allow",
             "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
             "Resource": [log_group_arn, f"{log_group_arn}:*"]},
        ],
    }


@dataclass
class Clients:
    """The boto3 clients of one deployment, each at its configured endpoint."""

    s3: Any
    iam: Any
    lambda_: Any
    region: str

    @classmethod
    def create(cls, settings: Settings, session=None) -> Clients:
        """Clients from ``session`` (a ``boto3.session.Session``; default a fresh one)."""
        import boto3
        from botocore.config import Config

        session = session or boto3.session.Session()
        region = settings.region or session.region_name
        if not region:
            raise ValueError("no AWS region configured: pass --region, set LAMBDAMAP_REGION or AWS_REGION")
        config = Config(retries={"mode": "standard", "total_max_attempts": 3})
        make = lambda service, url: session.client(service, region_name=region, endpoint_url=url,  # noqa: E731
                                                   config=config)
        return cls(s3=make("s3", settings.s3_endpoint_url), iam=make("iam", settings.iam_endpoint_url),
                   lambda_=make("lambda", settings.lambda_endpoint_url), region=region)


@dataclass
class Report:
    """What a deploy did, step by step (``created``, ``updated``, ``unchanged``, ...)."""

    steps: list[tuple[str, str, str]] = field(default_factory=list)  # (what, name, action)
    function_arn: str = ""
    layer_arn: str = ""

    def add(self, what: str, name: str, action: str, say: Callable[[str], None] | None) -> None:
        self.steps.append((what, name, action))
        if say:
            say(f"{what:<9} {name}: {action}")

    @property
    def changed(self) -> bool:
        return any(action != "unchanged" for _, _, action in self.steps)


def _code(exc: BaseException) -> str | None:
    return getattr(exc, "response", {}).get("Error", {}).get("Code")


# ---------------------------------------------------------------------------------------------
# preflight: what can be checked before the (long) build


class PreflightError(RuntimeError):
    """AWS refused something deploy needs, found before anything was built or changed."""


@dataclass
class Preflight:
    """What :func:`preflight` found: the clients, and which resources exist already."""

    clients: Clients
    exists: dict[str, bool]  # bucket, role, function -> found

    def summary(self) -> str:
        found = ", ".join(f"{what} {'exists' if there else 'will be created'}"
                          for what, there in self.exists.items())
        return f"credentials ok, region {self.clients.region}, {found}"


def preflight(settings: Settings, *, image: bool = False, session=None) -> Preflight:
    """Check, read-only, what deploy needs that no build can change; raise saying what to do.

    A bucket configured (``ValueError``), a region, credentials that AWS accepts, a bucket that
    this account owns in that region or that does not exist yet, and read access to the role,
    the function (of the same package type: zip or ``image``) and the layer.
    """
    import boto3
    from botocore.exceptions import ClientError

    bucket = settings.require_bucket()
    session = session or boto3.session.Session()
    if session.get_credentials() is None:
        raise PreflightError("no AWS credentials found: run `aws configure`, or set AWS_PROFILE or "
                             "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    clients = Clients.create(settings, session)
    exists: dict[str, bool] = {}

    def look(what: str, call: Callable, absent: set[str], permission: str, **kwargs) -> Any:
        try:
            found = call(**kwargs)
            exists[what] = True
            return found
        except ClientError as exc:
            code = _code(exc)
            if code in absent:
                exists[what] = False
                return None
            if code in _CREDENTIAL_ERRORS:
                raise PreflightError(f"AWS refused the credentials ({code}): {exc}; check "
                                     "`aws sts get-caller-identity`") from exc
            if code in _DENIED:
                raise PreflightError(f"not allowed to read {what} ({code}): the deployer needs "
                                     f"{permission} (docs/aws.md, Permissions)") from exc
            raise

    look(f"role {settings.role}", clients.iam.get_role, {"NoSuchEntity"}, "iam:GetRole",
         RoleName=settings.role)
    function = look(f"function {settings.function_name}", clients.lambda_.get_function,
                    {"ResourceNotFoundException"}, "lambda:GetFunction",
                    FunctionName=settings.function_name)
    wanted = "Image" if image else "Zip"
    if function and function["Configuration"].get("PackageType", "Zip") != wanted:
        raise PreflightError(
            f"function {settings.function_name!r} is a {function['Configuration']['PackageType']} "
            f"function; Lambda cannot change it to {wanted}: run `lambdamap destroy` first")
    if not image:
        try:
            _layer_versions(clients.lambda_, settings.layer)
        except ClientError as exc:
            if _code(exc) not in _DENIED:
                raise
            raise PreflightError(f"not allowed to list the versions of layer {settings.layer} "
                                 "(the deployer needs lambda:ListLayerVersions, docs/aws.md)") from exc
    try:
        clients.s3.head_bucket(Bucket=bucket)
        exists[f"bucket {bucket}"] = True
    except ClientError as exc:
        code, headers = _code(exc), exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        if code in ("404", "NoSuchBucket", "NotFound"):
            exists[f"bucket {bucket}"] = False
        elif code in ("301", "PermanentRedirect"):
            where = headers.get("x-amz-bucket-region", "another region")
            raise PreflightError(f"bucket {bucket!r} is in {where}, not {clients.region}: deploy "
                                 f"there (--region {where}) or choose another bucket") from exc
        elif code in _DENIED:
            raise PreflightError(
                f"bucket {bucket!r} exists but this account may not use it ({code}): bucket names "
                "are global, so choose another (--bucket), or get s3:ListBucket on it") from exc
        else:
            raise
    return Preflight(clients, exists)


# ---------------------------------------------------------------------------------------------
# deploy


def deploy(settings: Settings, *, layer=None, image_uri: str | None = None, session=None,
           say: Callable[[str], None] | None = print, checked: Preflight | None = None) -> Report:
    """Create or update everything; ``layer`` is a :class:`runtime_layer.build.LayerBuild`.

    Exactly one of ``layer`` (zip runtime) and ``image_uri`` (container image) is needed.
    :func:`preflight` runs first unless ``checked`` is its result already.
    """
    if (layer is None) == (image_uri is None):
        raise ValueError("deploy needs either a built layer or an image URI")
    if layer is not None and not layer.fits:
        raise ValueError(f"{layer.summary()}: too large for Lambda; deploy the container image "
                         "instead (`lambdamap deploy --image URI`, see docs/aws.md)")
    bucket = settings.require_bucket()
    clients = (checked or preflight(settings, image=image_uri is not None, session=session)).clients
    function_environment(settings, layer)  # within Lambda's 4 KB, before anything changes
    if layer is not None:
        _warn_if_newer_glibc(layer, say)
    report = Report()
    settings = _ensure_signing_key(settings, report, say)
    _ensure_bucket(clients, bucket, report, say)
    role_arn = _ensure_role(clients, settings, report, say)
    if layer is not None:
        report.layer_arn = _ensure_layer(clients, settings, layer, report, say)
    report.function_arn = _ensure_function(clients, settings, role_arn, report.layer_arn, layer,
                                           image_uri, report, say)
    return report


def _warn_if_newer_glibc(layer, say) -> None:
    """A layer built for a newer glibc than its runtime's (``--glibc``) cannot load there."""
    from runtime_layer.build import LAMBDA_RUNTIMES

    system, glibc = LAMBDA_RUNTIMES.get(layer.python_version, ("", ""))
    if layer.glibc and glibc and _glibc_key(layer.glibc) > _glibc_key(glibc):
        message = (f"the layer was built for glibc {layer.glibc}, but python{layer.python_version} "
                   f"runs on {system} (glibc {glibc}): its compiled packages will not load on AWS "
                   "(a build for the local emulator or another base)")
        log.warning(message)
        if say:
            say(f"warning   {message}")


def _glibc_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _ensure_signing_key(settings: Settings, report: Report, say) -> Settings:
    """The deployment's HMAC key: the configured one, or a new one saved in the config file."""
    if settings.signing_key:
        report.add("key", "signing key", "unchanged", say)
        return settings
    key = signing.new_key().hex()
    path = save_setting("signing_key", key)
    report.add("key", "signing key", f"created (stored in {path})", say)
    return settings.replace(signing_key=key)


def _ensure_bucket(clients: Clients, bucket: str, report: Report, say) -> None:
    from botocore.exceptions import ClientError

    try:
        clients.s3.head_bucket(Bucket=bucket)
        report.add("bucket", bucket, "unchanged", say)
        return
    except ClientError as exc:
        if _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise
    kwargs = {} if clients.region == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": clients.region}}
    clients.s3.create_bucket(Bucket=bucket, **kwargs)
    clients.s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True})
    report.add("bucket", bucket, "created", say)


def _ensure_role(clients: Clients, settings: Settings, report: Report, say) -> str:
    from botocore.exceptions import ClientError

    iam, name = clients.iam, settings.role
    try:
        role = iam.get_role(RoleName=name)["Role"]
        action = "unchanged"
        if _as_dict(role.get("AssumeRolePolicyDocument")) != TRUST_POLICY:
            iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(TRUST_POLICY))
            action = "updated"
    except ClientError as exc:
        if _code(exc) != "NoSuchEntity":
            raise
        role = iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
            Description=f"lambdamap function {settings.function_name}: its S3 prefix and its logs",
            Tags=[{"Key": "managed-by", "Value": "lambdamap"}])["Role"]
        action = "created"
    partition, account = role["Arn"].split(":")[1], role["Arn"].split(":")[4]
    log_group = (f"arn:{partition}:logs:{clients.region}:{account}:log-group:"
                 f"/aws/lambda/{settings.function_name}")
    policy = role_policy(settings.bucket, settings.prefix, log_group, partition)
    try:
        current = _as_dict(iam.get_role_policy(RoleName=name, PolicyName=POLICY_NAME)["PolicyDocument"])
    except ClientError as exc:
        if _code(exc) != "NoSuchEntity":
            raise
        current = None
    if current != policy:
        iam.put_role_policy(RoleName=name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(policy))
        action = "updated" if action == "unchanged" else action
    report.add("role", name, action, say)
    return role["Arn"]


def _as_dict(document: Any) -> Any:
    """IAM documents arrive decoded by botocore, or (some servers) as URL-encoded JSON text."""
    if isinstance(document, str):
        from urllib.parse import unquote

        return json.loads(unquote(document))
    return document


def _layer_description(layer) -> str:
    return (f"lambdamap {__version__} runtime, Python {layer.python_version} {layer.architecture}, "
            f"sha256:{layer.content_hash}")


def _ensure_layer(clients: Clients, settings: Settings, layer, report: Report, say) -> str:
    """Publish the layer unless a version with the same content hash exists; return its ARN."""
    lam, name = clients.lambda_, settings.layer
    wanted = _layer_description(layer)
    for version in _layer_versions(lam, name):
        if version.get("Description") == wanted:
            report.add("layer", f"{name}:{version['Version']}", "unchanged", say)
            return version["LayerVersionArn"]
    from runtime_layer.build import LAMBDA_INLINE_ZIP_LIMIT_BYTES

    if layer.zipped_bytes <= LAMBDA_INLINE_ZIP_LIMIT_BYTES:
        content = {"ZipFile": layer.zip_path.read_bytes()}
    else:  # larger zips must come from S3
        key = f"{settings.prefix.strip('/')}/{DEPLOY_PREFIX}layer-{layer.content_hash[:16]}.zip".lstrip("/")
        clients.s3.upload_file(str(layer.zip_path), settings.bucket, key)
        content = {"S3Bucket": settings.bucket, "S3Key": key}
    published = lam.publish_layer_version(
        LayerName=name, Description=wanted, Content=content,
        CompatibleRuntimes=[f"python{layer.python_version}"],
        CompatibleArchitectures=[layer.architecture])
    report.add("layer", f"{name}:{published['Version']}", "published", say)
    return published["LayerVersionArn"]


def _layer_versions(lam, name: str) -> list[dict]:
    versions, marker = [], None
    while True:
        page = lam.list_layer_versions(LayerName=name, **({"Marker": marker} if marker else {}))
        versions.extend(page.get("LayerVersions", []))
        marker = page.get("NextMarker")
        if not marker:
            return versions


def function_code(layer_hash: str = "") -> bytes:
    """The function's own zip: only a manifest, since the code lives in the layer (or image)."""
    from runtime_layer.build import zip_bytes

    manifest = dict(client_versions(), LAMBDAMAP_LAYER_SHA256=layer_hash)
    return zip_bytes({MANIFEST: json.dumps(manifest, indent=1, sort_keys=True).encode()})


def _is_role_not_ready(exc: BaseException) -> bool:
    return _code(exc) == "InvalidParameterValueException" and "cannot be assumed" in str(exc)


def _while_role_propagates(call: Callable, **kwargs):
    """``call(**kwargs)``, retried while Lambda cannot assume a role IAM has just created."""
    return Retrying(retry=retry_if_exception(_is_role_not_ready),
                    stop=stop_after_delay(ROLE_WAIT_SECONDS),
                    wait=wait_random_exponential(multiplier=0.5, max=10), reraise=True)(call, **kwargs)


@dataclass
class _FunctionSpec:
    """What the function should be: its configuration, code and tags."""

    config: dict[str, Any]
    code: dict[str, Any]          # ZipFile bytes or ImageUri
    code_sha256: str | None       # Lambda's CodeSha256 of the zip (None for an image)
    tags: dict[str, str]
    package_type: str


def function_environment(settings: Settings, layer=None) -> dict[str, str]:
    """The function's environment variables: versions, record, layer hash, signing key.

    Raises ``ValueError`` if they exceed Lambda's 4 KB (deploy asks before it changes anything).
    """
    env = dict(client_versions(), LAMBDAMAP_LAYER_SHA256=layer.content_hash if layer else "",
               **{signing.SIGNING_KEY_ENV: settings.signing_key or "0" * 64})
    if layer is not None:
        env[versions.RECORD_ENV] = versions.encode_record(layer.record())
    size = sum(len(k) + len(v) for k, v in env.items())
    if size > ENVIRONMENT_LIMIT_BYTES:
        raise ValueError(f"the function's environment would be {size:,} bytes, over Lambda's "
                         f"{ENVIRONMENT_LIMIT_BYTES:,}: the record of the runtime lists every "
                         "requirement asked for; ask for fewer (--requirement)")
    if settings.signing_key is None:
        del env[signing.SIGNING_KEY_ENV]
    return env


def _function_spec(settings: Settings, role_arn: str, layer_arn: str, layer,
                   image_uri: str | None) -> _FunctionSpec:
    layer_hash = layer.content_hash if layer is not None else ""
    env = function_environment(settings, layer)
    config: dict[str, Any] = {
        "Role": role_arn, "Timeout": settings.timeout, "MemorySize": settings.memory,
        "Environment": {"Variables": env},
        "Description": f"lambdamap {__version__} universal handler (wire format {wire.WIRE_VERSION}, "
                       f"Python {wire.python_version()})",
    }
    tags = {"managed-by": "lambdamap",
            **{k.lower().replace("_", "-"): v for k, v in client_versions().items()}}
    if image_uri is not None:
        return _FunctionSpec(config, {"ImageUri": image_uri}, None, tags, "Image")
    config.update(Runtime=runtime_name(), Handler=HANDLER, Layers=[layer_arn])
    code = function_code(layer_hash)
    sha = base64.b64encode(hashlib.sha256(code).digest()).decode()
    return _FunctionSpec(config, {"ZipFile": code}, sha, tags, "Zip")


def _ensure_function(clients: Clients, settings: Settings, role_arn: str, layer_arn: str,
                     layer, image_uri: str | None, report: Report, say) -> str:
    from botocore.exceptions import ClientError

    lam, name = clients.lambda_, settings.function_name
    spec = _function_spec(settings, role_arn, layer_arn, layer, image_uri)
    try:
        current = lam.get_function(FunctionName=name)
    except ClientError as exc:
        if _code(exc) != "ResourceNotFoundException":
            raise
        created = _while_role_propagates(
            lam.create_function, FunctionName=name, Code=spec.code, PackageType=spec.package_type,
            Architectures=[settings.architecture], Tags=spec.tags, **spec.config)
        lam.get_waiter("function_active_v2").wait(FunctionName=name)
        _ensure_no_async_retries(lam, name)
        report.add("function", name, "created", say)
        return created["FunctionArn"]
    changes = _update_function(lam, name, settings, spec, current)
    report.add("function", name, "updated " + ", ".join(changes) if changes else "unchanged", say)
    return current["Configuration"]["FunctionArn"]


def _update_function(lam, name: str, settings: Settings, spec: _FunctionSpec,
                     current: dict) -> list[str]:
    """Bring an existing function to ``spec``, touching only what differs; say what changed."""
    config = current["Configuration"]
    if config.get("PackageType", "Zip") != spec.package_type:
        raise ValueError(f"function {name!r} is a {config.get('PackageType')} function; Lambda cannot "
                         f"change it to {spec.package_type}: run `lambdamap destroy` first")
    changes = []
    code_differs = (config.get("CodeSha256") != spec.code_sha256 if spec.code_sha256
                    else current.get("Code", {}).get("ImageUri") != spec.code["ImageUri"])
    if code_differs or config.get("Architectures", ["x86_64"]) != [settings.architecture]:
        lam.update_function_code(FunctionName=name, Architectures=[settings.architecture], **spec.code)
        lam.get_waiter("function_updated_v2").wait(FunctionName=name)
        changes.append("code")
    stale = {k: v for k, v in spec.config.items() if _current_value(config, k) != v}
    if stale:
        _while_role_propagates(lam.update_function_configuration, FunctionName=name, **stale)
        lam.get_waiter("function_updated_v2").wait(FunctionName=name)
        changes.append("configuration (" + ", ".join(sorted(stale)) + ")")
    if {k: current.get("Tags", {}).get(k) for k in spec.tags} != spec.tags:
        lam.tag_resource(Resource=config["FunctionArn"], Tags=spec.tags)
        changes.append("tags")
    if _ensure_no_async_retries(lam, name):
        changes.append("retries")
    return changes


def _ensure_no_async_retries(lam, name: str) -> bool:
    """Turn off Lambda's own retries of failed asynchronous invocations (default 2).

    The executor re-invokes lost calls itself, bounded by ``max_retries``; Lambda retrying too
    would multiply the attempts silently. Returns whether the setting had to change.
    """
    from botocore.exceptions import ClientError

    try:
        current = lam.get_function_event_invoke_config(FunctionName=name)
        if current.get("MaximumRetryAttempts") == 0:
            return False
    except ClientError as exc:
        if _code(exc) != "ResourceNotFoundException":
            raise
    lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0)
    return True


def _current_value(config: dict, key: str) -> Any:
    if key == "Layers":
        return [layer["Arn"] for layer in config.get("Layers", [])]
    if key == "Environment":
        return {"Variables": config.get("Environment", {}).get("Variables", {})}
    return config.get(key)


# ---------------------------------------------------------------------------------------------
# status and destroy


def status(settings: Settings, *, session=None, probe: bool = True) -> dict[str, Any]:
    """What is deployed, and how its runtime compares with this client.

    ``versions`` is a :class:`lambdamap.versions.Comparison` of the client with the deployment's
    record and, with ``probe``, with the runtime's own answer to one synchronous invocation
    (``probe_error`` says why there is none); ``matches`` is False if it holds an error.
    """
    from botocore.exceptions import ClientError

    from .backends.aws import probe_runtime
    from .errors import LambdamapError

    clients = Clients.create(settings, session)
    info: dict[str, Any] = {"function": None, "role": None, "bucket": None, "layers": [],
                            "record": None, "probe": None, "probe_error": None, "versions": None,
                            "matches": False}
    try:
        config = clients.lambda_.get_function_configuration(FunctionName=settings.function_name)
        info["function"] = {k: config.get(k) for k in (
            "FunctionArn", "State", "LastUpdateStatus", "PackageType", "Runtime", "MemorySize",
            "Timeout", "Architectures")}
        info["function"]["Layers"] = [layer["Arn"] for layer in config.get("Layers", [])]
        record = info["record"] = versions.parse_record(config.get("Environment", {}).get("Variables", {}))
        client = versions.describe((record or {}).get("versions") or ())
        if probe:
            try:
                info["probe"] = probe_runtime(clients.lambda_, settings.function_name,
                                              list(client["versions"]))
            except LambdamapError as exc:
                info["probe_error"] = str(exc)
        info["versions"] = versions.compare(client, record, info["probe"])
        info["matches"] = not info["versions"].errors
    except ClientError as exc:
        if _code(exc) != "ResourceNotFoundException":
            raise
    try:
        info["role"] = clients.iam.get_role(RoleName=settings.role)["Role"]["Arn"]
    except ClientError as exc:
        if _code(exc) != "NoSuchEntity":
            raise
    if settings.bucket:
        try:
            clients.s3.head_bucket(Bucket=settings.bucket)
            info["bucket"] = f"s3://{settings.bucket}/{settings.prefix.strip('/')}"
        except ClientError as exc:
            if _code(exc) not in ("404", "NoSuchBucket", "NotFound", "403"):
                raise
    info["layers"] = [v["LayerVersionArn"] for v in _layer_versions(clients.lambda_, settings.layer)]
    return info


def destroy(settings: Settings, *, delete_bucket: bool = False, session=None,
            say: Callable[[str], None] | None = print) -> Report:
    """Remove what :func:`deploy` made: function, layer versions, role; the bucket only if asked."""
    from botocore.exceptions import ClientError

    clients = Clients.create(settings, session)
    report = Report()
    lam, iam = clients.lambda_, clients.iam
    try:
        lam.delete_function(FunctionName=settings.function_name)
        report.add("function", settings.function_name, "deleted", say)
    except ClientError as exc:
        if _code(exc) != "ResourceNotFoundException":
            raise
        report.add("function", settings.function_name, "absent", say)
    for version in _layer_versions(lam, settings.layer):
        lam.delete_layer_version(LayerName=settings.layer, VersionNumber=version["Version"])
        report.add("layer", f"{settings.layer}:{version['Version']}", "deleted", say)
    try:
        for policy in iam.list_role_policies(RoleName=settings.role)["PolicyNames"]:
            iam.delete_role_policy(RoleName=settings.role, PolicyName=policy)
        iam.delete_role(RoleName=settings.role)
        report.add("role", settings.role, "deleted", say)
    except ClientError as exc:
        if _code(exc) != "NoSuchEntity":
            raise
        report.add("role", settings.role, "absent", say)
    if settings.bucket:
        _destroy_bucket_data(clients, settings, delete_bucket, report, say)
    return report


def _destroy_bucket_data(clients: Clients, settings: Settings, delete_bucket: bool, report: Report,
                         say) -> None:
    from botocore.exceptions import ClientError

    from .storage import S3Storage

    store = S3Storage(settings.bucket, "" if delete_bucket else settings.prefix,
                      region=clients.region, endpoint_url=settings.s3_endpoint_url)
    try:
        # Without --delete-bucket only the deploy artifacts go; job data of running clients stays.
        removed = store.delete("" if delete_bucket else DEPLOY_PREFIX)
        if delete_bucket:
            clients.s3.delete_bucket(Bucket=settings.bucket)
            report.add("bucket", settings.bucket, f"deleted ({removed} objects)", say)
        else:
            report.add("bucket", settings.bucket, "kept (pass --delete-bucket to remove it)", say)
    except Exception as exc:  # noqa: BLE001 - a missing bucket is already gone
        if "does not exist" not in str(exc) and not (isinstance(exc, ClientError)
                                                     and _code(exc) == "NoSuchBucket"):
            raise
        report.add("bucket", settings.bucket, "absent", say)
