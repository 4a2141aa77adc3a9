"""Command line for ``scripts.weights.conversion``: Swin encoder weights to / from the research layout.

python -m scripts.tools.convert_weights to_research models/ssl_encoder.pt models/model_swinvit_ours.pt
python -m scripts.tools.convert_weights to_bundle models/model_swinvit.pt models/ssl_encoder_from_paper.pt
"""

import fire

from scripts.errors import install_error_hook
from scripts.weights.conversion import to_bundle, to_research

if __name__ == "__main__":
    install_error_hook(command=True)
    fire.Fire({"to_research": to_research, "to_bundle": to_bundle})
