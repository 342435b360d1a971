"""Model loading shared by the runtime, domain and experiments: embedded model, tiny models, GGUF,
device resolution and bitsandbytes configuration."""
