"""AccountService: what the server holds about the calling account (its key receipt).

Every authenticated role reaches these handlers (:mod:`tracemark.server.auth`); the account is always the
caller's own, from the bearer token. A receipt holds the account's key commitments and an inclusion proof
to a signed checkpoint (:func:`tracemark.forensics.tlog.key_receipt`); it never holds a key.
"""

from __future__ import annotations

import json

import grpc
from tracemark.forensics.tlog import key_receipt
from tracemark.server.auth import current_account
from tracemark.server.errors import RequestError, grpc_errors
from tracemark.server.runtime import Runtime
from tracemark.v1 import account_pb2, account_pb2_grpc


class AccountServicer(account_pb2_grpc.AccountServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    @grpc_errors
    def GetKeyReceipt(self, request, context) -> account_pb2.GetKeyReceiptResponse:
        account = current_account()
        if account is None:  # the interceptor already refuses this; never serve an anonymous receipt
            raise RequestError(grpc.StatusCode.UNAUTHENTICATED, "a key receipt needs a bearer token")
        if self.rt.engine is None or self.rt.master is None:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, "this server runs without a ledger")
        # KeyReceiptNotFound (no commitment yet) -> NOT_FOUND; LogBusy -> UNAVAILABLE
        receipt = key_receipt(self.rt.engine, account=account, master=self.rt.master)
        return account_pb2.GetKeyReceiptResponse(
            receipt_json=json.dumps(receipt, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        )
