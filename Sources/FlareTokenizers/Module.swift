// The FlareTokenizers module.
