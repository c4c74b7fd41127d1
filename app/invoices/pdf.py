"""Our own invoice PDF (fpdf2), for invoices Stripe has no PDF for. Pure: data in, bytes out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from app.invoices.lines import InvoiceLine
from app.money import exponent, format_amount

INK = (33, 37, 41)
MUTED = (108, 117, 125)
RULE = (222, 226, 230)
BAND = (245, 247, 250)
ACCENT = (52, 84, 209)
STATUS_COLOURS = {
    "paid": (25, 135, 84),
    "open": (214, 130, 0),
    "draft": (108, 117, 125),
    "void": (108, 117, 125),
    "uncollectible": (200, 35, 51),
}
STATUS_LABELS = {
    "paid": "PAID",
    "open": "UNPAID",
    "draft": "DRAFT",
    "void": "VOID",
    "uncollectible": "UNPAID",
}


@dataclass(frozen=True, slots=True)
class Party:
    name: str
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InvoiceDocument:
    issuer: Party
    bill_to: Party
    number: str
    status: str
    currency: str
    issued_at: datetime
    period_start: datetime | None
    period_end: datetime | None
    paid_at: datetime | None
    lines: tuple[InvoiceLine, ...]
    subtotal: int
    tax: int
    total: int
    amount_paid: int
    amount_due: int


# Typographic characters outside Latin-1 that have a plain equivalent.
_PLAIN = str.maketrans(
    {"\u2013": "-", "\u2014": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
     "\u2026": "...", "\u2022": "*", "\u20ac": "EUR", "\u00a0": " ", "\u2212": "-"}
)  # fmt: skip


def _text(value: str) -> str:
    """The core PDF fonts are Latin-1; anything else without a plain equivalent is shown as '?'."""
    return value.translate(_PLAIN).encode("latin-1", "replace").decode("latin-1")


def _date(value: datetime | None) -> str:
    return value.strftime("%d %b %Y") if value else "-"


def _is_span(start: datetime | None, end: datetime | None) -> bool:
    """A service period worth printing (one-off items carry start == end)."""
    return start is not None and end is not None and start != end


def format_unit_price(unit_amount: Decimal | None, currency: str) -> str:
    """A unit price in minor units shown in major units, with more decimals only when it has them."""
    if unit_amount is None:
        return "-"
    places = exponent(currency)
    major = unit_amount.scaleb(-places).normalize()
    digits = max(places, -int(major.as_tuple().exponent))
    return f"{major:,.{digits}f} {currency.upper()}"


class _InvoicePdf(FPDF):
    def __init__(self, issuer: Party, number: str) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self._issuer = issuer
        self._number = number
        self.set_margins(18, 18, 18)
        self.set_auto_page_break(auto=True, margin=24)
        self.set_title(_text(f"Invoice {number}"))
        self.set_author(_text(issuer.name))
        self.set_creator("billing")

    def footer(self) -> None:
        self.set_y(-16)
        self.set_draw_color(*RULE)
        self.line(self.l_margin, self.get_y(), self.w - self.r_margin, self.get_y())
        self.set_font("helvetica", "", 8)
        self.set_text_color(*MUTED)
        left = _text(f"{self._issuer.name} - Invoice {self._number}")
        self.cell(0, 8, left, align="L")
        self.set_x(self.l_margin)
        self.cell(0, 8, f"Page {self.page_no()}/{{nb}}", align="R")


def render_invoice_pdf(doc: InvoiceDocument) -> bytes:
    pdf = _InvoicePdf(doc.issuer, doc.number)
    pdf.alias_nb_pages()
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin
    _header(pdf, doc, width)
    _parties(pdf, doc, width)
    _line_table(pdf, doc, width)
    _totals(pdf, doc, width)
    _closing(pdf, doc)
    return bytes(pdf.output())


def _header(pdf: FPDF, doc: InvoiceDocument, width: float) -> None:
    top = pdf.get_y()
    pdf.set_text_color(*ACCENT)
    pdf.set_font("helvetica", "B", 18)
    pdf.cell(width / 2, 9, _text(doc.issuer.name), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("helvetica", "", 9)
    pdf.set_text_color(*MUTED)
    for line in doc.issuer.lines:
        pdf.cell(width / 2, 4.6, _text(line), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    bottom_left = pdf.get_y()

    pdf.set_xy(pdf.l_margin + width / 2, top)
    pdf.set_text_color(*INK)
    pdf.set_font("helvetica", "B", 24)
    pdf.cell(width / 2, 11, "INVOICE", align="R", new_x=XPos.LEFT, new_y=YPos.NEXT)
    colour = STATUS_COLOURS.get(doc.status, MUTED)
    label = STATUS_LABELS.get(doc.status, doc.status.upper())
    pdf.set_font("helvetica", "B", 10)
    badge = pdf.get_string_width(label) + 8
    pdf.set_x(pdf.l_margin + width - badge)
    pdf.set_fill_color(*colour)
    pdf.set_text_color(255, 255, 255)
    pdf.cell(badge, 7, label, align="C", fill=True, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2)
    meta = [
        ("Invoice number", doc.number),
        ("Date of issue", _date(doc.issued_at)),
        ("Currency", doc.currency.upper()),
    ]
    if _is_span(doc.period_start, doc.period_end):
        meta.append(("Service period", f"{_date(doc.period_start)} - {_date(doc.period_end)}"))
    if doc.paid_at:
        meta.append(("Paid on", _date(doc.paid_at)))
    for key, value in meta:
        pdf.set_x(pdf.l_margin + width / 2)
        pdf.set_font("helvetica", "", 9)
        pdf.set_text_color(*MUTED)
        pdf.cell(width / 4, 5, key, align="R")
        pdf.set_font("helvetica", "B", 9)
        pdf.set_text_color(*INK)
        pdf.cell(width / 4, 5, _text(value), align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_y(max(bottom_left, pdf.get_y()) + 8)


def _parties(pdf: FPDF, doc: InvoiceDocument, width: float) -> None:
    pdf.set_draw_color(*RULE)
    pdf.line(pdf.l_margin, pdf.get_y(), pdf.l_margin + width, pdf.get_y())
    pdf.ln(5)
    top = pdf.get_y()
    for column, (title, party) in enumerate((("BILL TO", doc.bill_to), ("FROM", doc.issuer))):
        x = pdf.l_margin + column * width / 2
        pdf.set_xy(x, top)
        pdf.set_font("helvetica", "B", 8)
        pdf.set_text_color(*MUTED)
        pdf.cell(width / 2, 5, title, new_x=XPos.LEFT, new_y=YPos.NEXT)
        pdf.set_font("helvetica", "B", 10)
        pdf.set_text_color(*INK)
        pdf.cell(width / 2, 5.5, _text(party.name), new_x=XPos.LEFT, new_y=YPos.NEXT)
        pdf.set_font("helvetica", "", 9)
        for line in party.lines:
            pdf.cell(width / 2, 4.8, _text(line), new_x=XPos.LEFT, new_y=YPos.NEXT)
    pdf.set_y(top + 5 + 5.5 + 4.8 * max(len(doc.bill_to.lines), len(doc.issuer.lines)) + 8)


COLUMNS = (("Description", 0.40, "L"), ("Qty", 0.09, "R"), ("Unit price", 0.18, "R"), ("Tax", 0.14, "R"))


def _table_header(pdf: FPDF, widths: list[float]) -> None:
    pdf.set_fill_color(*BAND)
    pdf.set_text_color(*MUTED)
    pdf.set_font("helvetica", "B", 8.5)
    for (title, _, align), w in zip((*COLUMNS, ("Amount", 0, "R")), widths, strict=True):
        pdf.cell(w, 8, title.upper(), align=align, fill=True)
    pdf.ln(8)


def _line_table(pdf: FPDF, doc: InvoiceDocument, width: float) -> None:
    widths = [width * share for _, share, _ in COLUMNS]
    widths.append(width - sum(widths))
    aligns = [align for _, _, align in COLUMNS] + ["R"]
    _table_header(pdf, widths)
    for line in doc.lines:
        if pdf.will_page_break(14):
            pdf.add_page()
            _table_header(pdf, widths)
        top = pdf.get_y()
        pdf.set_text_color(*INK)
        pdf.set_font("helvetica", "", 9.5)
        description = line.description or line.plan_name or "Item"
        pdf.multi_cell(widths[0] - 4, 5.5, _text(description), align="L", new_x=XPos.LEFT, new_y=YPos.NEXT)
        details = []
        if line.plan_name and line.plan_name != description:
            details.append(f"Plan: {line.plan_name}")
        if _is_span(line.period_start, line.period_end):
            details.append(f"{_date(line.period_start)} - {_date(line.period_end)}")
        if details:
            pdf.set_font("helvetica", "", 8)
            pdf.set_text_color(*MUTED)
            pdf.multi_cell(
                widths[0] - 4, 4.2, _text("  |  ".join(details)), align="L", new_x=XPos.LEFT, new_y=YPos.NEXT
            )
        bottom = pdf.get_y() + 1.5
        pdf.set_xy(pdf.l_margin + widths[0], top)
        pdf.set_font("helvetica", "", 9.5)
        pdf.set_text_color(*INK)
        values = [
            f"{line.quantity:,}",
            format_unit_price(line.unit_amount, line.currency),
            format_amount(line.tax, line.currency),
            format_amount(line.amount, line.currency),
        ]
        for value, w, align in zip(values, widths[1:], aligns[1:], strict=True):
            pdf.cell(w, 6.5, value, align=align)
        pdf.set_y(bottom)
        pdf.set_draw_color(*RULE)
        pdf.line(pdf.l_margin, bottom, pdf.l_margin + width, bottom)
        pdf.ln(1)
    if not doc.lines:
        pdf.set_font("helvetica", "I", 9)
        pdf.set_text_color(*MUTED)
        pdf.cell(width, 8, "No line items", new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _totals(pdf: FPDF, doc: InvoiceDocument, width: float) -> None:
    if pdf.will_page_break(45):
        pdf.add_page()
    pdf.ln(4)
    label_x = pdf.l_margin + width * 0.55
    label_w, value_w = width * 0.25, width * 0.20
    rows = [("Subtotal", doc.subtotal, False), ("Tax", doc.tax, False), ("Total", doc.total, True)]
    if doc.amount_paid:
        rows.append(("Amount paid", doc.amount_paid, False))
    rows.append(("Amount due", doc.amount_due if doc.status != "paid" else 0, True))
    if doc.total < 0:  # a credit invoice: Stripe adds its credit to the customer's balance
        rows.append(("Credited to balance", -doc.total, False))
    for label, amount, strong in rows:
        pdf.set_x(label_x)
        if strong:
            pdf.set_draw_color(*RULE)
            pdf.line(label_x, pdf.get_y(), label_x + label_w + value_w, pdf.get_y())
        pdf.set_font("helvetica", "B" if strong else "", 10 if strong else 9.5)
        pdf.set_text_color(*(INK if strong else MUTED))
        pdf.cell(label_w, 7, label)
        pdf.set_text_color(*INK)
        pdf.cell(
            value_w, 7, format_amount(amount, doc.currency), align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT
        )


def _closing(pdf: FPDF, doc: InvoiceDocument) -> None:
    pdf.ln(10)
    pdf.set_font("helvetica", "", 9)
    pdf.set_text_color(*MUTED)
    if doc.total < 0 and doc.status != "void":
        note = (
            f"{format_amount(-doc.total, doc.currency)} is credited to your account balance and applies"
            " to your next invoices."
        )
    elif doc.status == "paid":
        note = f"Paid in full on {_date(doc.paid_at)}. Thank you for your business."
    elif doc.status == "void":
        note = "This invoice has been voided; nothing is owed."
    else:
        note = f"Please pay {format_amount(doc.amount_due, doc.currency)} by the due date. Thank you."
    pdf.multi_cell(0, 5, _text(note), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    contact = doc.issuer.lines[-1] if doc.issuer.lines else doc.issuer.name
    pdf.multi_cell(0, 5, _text(f"Questions about this invoice: {contact}"), align="L")
