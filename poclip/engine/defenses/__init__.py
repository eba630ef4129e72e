"""Defenses a user could pick instead of (or beside) PO-CLIP, behind one interface (:mod:`.base`)."""
