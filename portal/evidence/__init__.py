"""Evidence for regulators: signed evidence packs, regulator recipients, compliance reports, breaches."""
