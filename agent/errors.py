"""The agent's one error tree.

    AgentError
    ├── ApiError                      an answer to an API call, in SageMaker's own words
    │   ├── ValidationException       a request member breaks a rule of the service model
    │   ├── ResourceInUse             the CompilationJobName is taken
    │   ├── ResourceNotFound          no such compilation job
    │   ├── ResourceLimitExceeded     the queue is full
    │   ├── UnknownOperationException an operation this API does not have
    │   ├── SerializationException    the request body is not a JSON object
    │   ├── AccessDeniedException     the requester may not do this here (allow-lists, Host check)
    │   ├── ServiceUnavailable        the agent is shutting down: try again after it restarts
    │   └── (transport-level refusals in agent/transports: RequestTooLargeException, the
    │        SigV4 errors; each carries SageMaker's code and HTTP status)
    ├── JobFailure                    a job ends FAILED; .reason is Neo's FailureReason
    │   ├── ClientError               the request or the model is at fault (keyword says how)
    │   └── ServerError               this device or the agent is at fault
    └── ConfigError                   the agent's own configuration is wrong (names the key)

Foreign errors (botocore, TVM, onnx, onnxruntime) are translated where the agent calls
those libraries, with `raise ... from exc`, so the cause stays on the chain.
"""
from __future__ import annotations

FAILURE_REASON_MAX = 1024  # DescribeCompilationJob's FailureReason is 0..1024 characters


class AgentError(Exception):
    """Base of everything the agent raises on purpose."""


class ApiError(AgentError):
    """An error answer to one of the five operations.

    `code` is the error shape name from botocore's model; `http_status` what SageMaker sends.
    """

    code = "InternalFailure"
    http_status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_body(self) -> dict:
        """SageMaker's JSON error body (awsJson1.1)."""
        return {"__type": self.code, "message": self.message}


class ValidationException(ApiError):
    code = "ValidationException"
    http_status = 400


class ResourceInUse(ApiError):
    code = "ResourceInUse"
    http_status = 400


class ResourceNotFound(ApiError):
    code = "ResourceNotFound"
    http_status = 400


class ResourceLimitExceeded(ApiError):
    code = "ResourceLimitExceeded"
    http_status = 400


class UnknownOperationException(ApiError):
    """AWS's own code for an operation name the service does not know."""

    code = "UnknownOperationException"
    http_status = 400


class ServiceUnavailable(ApiError):
    """AWS's common 503: the agent is shutting down. AWS SDKs retry it with backoff."""

    code = "ServiceUnavailable"
    http_status = 503


class SerializationException(ApiError):
    """The request is not a JSON object (awsJson's own code for a body it cannot read)."""

    code = "SerializationException"
    http_status = 400


class AccessDeniedException(ApiError):
    """The requester may not do this on this device (AWS's common error code)."""

    code = "AccessDeniedException"
    http_status = 403


class JobFailure(AgentError):
    """A job ends FAILED.

    The FailureReason reads `<kind>: <keyword>: <detail>`, as Neo's do, e.g.
    `ClientError: InputConfiguration: Exactly one .onnx file is allowed for ONNX model, found 2`.
    """

    kind = "ServerError"

    def __init__(self, keyword: str, detail: str):
        self.keyword = keyword
        self.detail = detail
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        text = f"{self.kind}: {self.keyword}: {self.detail}" if self.keyword else f"{self.kind}: {self.detail}"
        return truncate_reason(text)


class ClientError(JobFailure):
    kind = "ClientError"


class ServerError(JobFailure):
    kind = "ServerError"


class ConfigError(AgentError):
    """Bad agent configuration; the message names the key."""


def truncate_reason(text: str, limit: int = FAILURE_REASON_MAX) -> str:
    """Keep a FailureReason within the service model's 1024 characters."""
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..."
