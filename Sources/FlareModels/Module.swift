// The FlareModels module.
