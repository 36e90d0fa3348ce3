"""Write .gpu/parity.npz: up to 1000 rows (the test split first) and the CPU answers of the bento's ONNX model."""
import json, sys
from pathlib import Path
import numpy as np, pandas as pd

proj, model_dir, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
sys.path.insert(0, str(proj))
from mlops_nb.contracts import ModelCard
from mlops_nb.serving.scoring import ScoringCore

split = json.loads((proj / "products/snapshot/split.json").read_text())
frame = pd.read_parquet(next((proj / "products/snapshots").glob("*.parquet")))
features = [c for c in frame.columns if c != "target"]
test = list(split["test"])
rest = [i for i in range(len(frame)) if i not in set(test)]
ids = (test + rest)[:1000]
X = frame.iloc[ids][features].to_numpy(np.float32)
card = ModelCard.model_validate_json((model_dir / "model_card.json").read_text())
core = ScoringCore(model_dir, card, device="cpu", max_rows=100000)
probs = core.score(core.validate(X.tolist(), numbers_only=True))
labels = core.classes[probs.argmax(axis=1)]
np.savez_compressed(out, X=X, probs=probs, labels=labels, row_ids=np.asarray(ids), n_test=len(test),
                    target=frame.iloc[ids]["target"].to_numpy())
print(out, X.shape, "test rows", len(test), "accuracy", float((labels == frame.iloc[ids]["target"].to_numpy()).mean()),
      "provider", core.provider, "features", card.n_features, card.feature_min, card.feature_max)
