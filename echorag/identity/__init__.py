"""Who is asking: authentication modes, user keys, owner scopes and the admin token."""
