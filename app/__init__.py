"""billing: the payment and subscription service of an API marketplace."""
