"""`shipway bench`: where a version's serving time goes, and the load generator it drives."""
