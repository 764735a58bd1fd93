"""Space invitations: how a principal becomes a member of a space with its own consent."""
