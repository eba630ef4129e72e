"""The synthetic world: procedurally drawn objects, typographic attacks, picture handling, label sets."""
