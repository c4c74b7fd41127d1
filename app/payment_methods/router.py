from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from app.dependencies import CurrentUser
from app.dependencies import PaymentMethods as Service
from app.http import error_responses
from app.payment_methods.schemas import (
    PaymentMethodCreate,
    PaymentMethodList,
    PaymentMethodOut,
    SetupIntentOut,
    StripePaymentMethodId,
)
from app.payment_methods.service import payment_method_out

router = APIRouter(prefix="/payment-methods", tags=["payment methods"])
PaymentMethodPath = Annotated[StripePaymentMethodId, Path(description="The Stripe payment method id")]


@router.post(
    "",
    summary="Add a card from Stripe.js (the first one becomes the default)",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(401, 402, 404, 409, 502, codes={404: ("not_registered",)}),
)
async def add_payment_method(
    body: PaymentMethodCreate, principal: CurrentUser, service: Service
) -> PaymentMethodOut:
    return payment_method_out(await service.add(principal, body.payment_method_id))


@router.get("", summary="List the caller's cards", responses=error_responses(401, 404))
async def list_payment_methods(principal: CurrentUser, service: Service) -> PaymentMethodList:
    cards = await service.list(principal)
    return PaymentMethodList(payment_methods=[payment_method_out(card) for card in cards])


@router.post(
    "/setup-intent",
    summary="A SetupIntent client secret to collect a card with SCA",
    responses=error_responses(401, 404, 502),
)
async def create_setup_intent(principal: CurrentUser, service: Service) -> SetupIntentOut:
    return SetupIntentOut(client_secret=await service.create_setup_intent(principal))


@router.delete(
    "/{payment_method_id}",
    summary="Detach a card",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 404, 409, 502, codes={409: ("payment_method_in_use",)}),
)
async def delete_payment_method(
    payment_method_id: PaymentMethodPath, principal: CurrentUser, service: Service
) -> Response:
    await service.delete(principal, payment_method_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put(
    "/{payment_method_id}/default",
    summary="Make a card the default (also for Stripe invoices)",
    responses=error_responses(401, 404, 502),
)
async def set_default_payment_method(
    payment_method_id: PaymentMethodPath, principal: CurrentUser, service: Service
) -> PaymentMethodOut:
    return payment_method_out(await service.set_default(principal, payment_method_id))
