"""The names of the diffusers backend's variables: read by its settings, and named by
the model host's messages (which say what a person sets to fix a load)."""

ENV_MODEL = "SYSTEMSCULPT_LOCAL_DIFFUSERS_MODEL"
ENV_DEVICE = "SYSTEMSCULPT_LOCAL_DIFFUSERS_DEVICE"
ENV_DTYPE = "SYSTEMSCULPT_LOCAL_DIFFUSERS_DTYPE"
ENV_IDLE_MS = "SYSTEMSCULPT_LOCAL_DIFFUSERS_IDLE_MS"
ENV_LOAD_TIMEOUT_MS = "SYSTEMSCULPT_LOCAL_DIFFUSERS_LOAD_TIMEOUT_MS"
ENV_MODELS_DIR = "SYSTEMSCULPT_LOCAL_DIFFUSERS_MODELS_DIR"
INSTALL_MODEL = "studio-imagegen-worker install --backend diffusers"
