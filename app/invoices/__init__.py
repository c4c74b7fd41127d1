"""Invoices: the consumer's list, detail, download and PDF; custom invoices created by admins."""
