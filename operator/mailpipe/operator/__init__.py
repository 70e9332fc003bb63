"""Control plane: kopf handlers and pure builders for SendingPool and Campaign."""
