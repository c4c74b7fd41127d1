"""`billing reconcile`: a read-only report of where our store and Stripe disagree."""
