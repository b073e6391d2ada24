"""The Lambda service's error responses, as boto3 expects to parse them.

Lambda speaks ``rest-json``: botocore takes the error code from the ``x-amzn-ErrorType`` header
and the shape's fields from the JSON body, so ``ApiError(404, "ResourceNotFoundException", ...)``
makes boto3 raise ``client.exceptions.ResourceNotFoundException``.
"""
from __future__ import annotations

import json


class ApiError(Exception):
    """An error answer of the Invoke API: HTTP status, error code and the JSON body's fields."""

    def __init__(self, status: int, code: str, message: str, *, message_key: str = "Message",
                 **fields: str):
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message
        # Lambda's shapes spell it "Message", except TooManyRequestsException's "message".
        self.body = {"Type": "User", message_key: message, **fields}

    def json_body(self) -> bytes:
        return json.dumps(self.body).encode()


def resource_not_found(arn: str) -> ApiError:
    return ApiError(404, "ResourceNotFoundException", f"Function not found: {arn}")


def too_many_requests(
        reason: str = "ReservedFunctionConcurrentInvocationLimitExceeded") -> ApiError:
    return ApiError(429, "TooManyRequestsException", "Rate Exceeded.", message_key="message",
                    Reason=reason)


def request_too_large(limit: int, operation: str) -> ApiError:
    return ApiError(413, "RequestTooLargeException",
                    f"Request must be smaller than {limit} bytes for the {operation} operation")


def invalid_request_content(message: str) -> ApiError:
    return ApiError(400, "InvalidRequestContentException", message)


def invalid_parameter(message: str) -> ApiError:
    return ApiError(400, "InvalidParameterValueException", message)


def service_unavailable(message: str) -> ApiError:
    body_error = ApiError(503, "ServiceException", message)
    body_error.body["Type"] = "Service"
    return body_error
