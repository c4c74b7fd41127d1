"""Creator payouts: available net earnings transferred to Connect accounts, once per period."""
