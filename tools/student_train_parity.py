"""Training-dynamics parity: the same MobileNetV2 (width 16 -> torchvision width_mult 0.25, small
stem) from the same initial weights (pca_jax's init exported with flax_to_torchvision), trained
full-batch on the same 100 digits images (10 per class, 16 px; AdamW 1e-3, weight decay 0.01 on
kernels only, no augmentation, dropout off) 100 steps in Flax (pca_jax) and in PyTorch
(torchvision), then evaluated on the other 1,697 digits. Not a test (it needs torch +
torchvision): a check that a student's low demo accuracy is the architecture's, not the port's.

  python tools/student_train_parity.py        # ~2 min on 2 cores

Measured (docs/students.md): the losses agree at step 0 (2.3694 / 2.3693) and both reach ~1e-4;
eval top-1 15.2 % (Flax) and 15.9 % (PyTorch).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from pca_jax.models import create_model  # noqa: E402
from pca_jax.models.torch_weights import flax_to_torchvision  # noqa: E402
from tests.helpers import import_torchvision  # noqa: E402
torch.set_num_threads(1)
name = "mobilenet_v2"
d = load_digits()
x = np.repeat(np.repeat(d.images / 16.0, 2, 1), 2, 2)[..., None].repeat(3, -1).astype(np.float32)
x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
y = d.target
idx = np.concatenate([np.where(y == c)[0][:10] for c in range(10)])
xt, yt = x[idx], y[idx]
model = create_model(name, 10, 16, "small")
model = model.clone(dropout=0.0)
v = jax.jit(lambda k: model.init(k, xt[:1], train=False))(jax.random.key(0))
tx = optax.adamw(1e-3, weight_decay=0.01, mask=lambda p: jax.tree.map(lambda a: a.ndim > 1, p))
params, bs = v["params"], v.get("batch_stats", {})
opt = tx.init(params)
@jax.jit
def step(params, bs, opt):
  def loss(p):
    out, upd = model.apply({"params": p, "batch_stats": bs}, xt, train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(out, yt).mean(), upd
  (l, upd), g = jax.value_and_grad(loss, has_aux=True)(params)
  u, opt = tx.update(g, opt, params)
  return optax.apply_updates(params, u), upd.get("batch_stats", {}), opt, l
tv = import_torchvision()
net = tv.models.mobilenet_v2(num_classes=10, width_mult=0.25)
net.features[0][0].stride = (1, 1)   # pca_jax's small stem
net.classifier[0].p = 0.0
net.load_state_dict(flax_to_torchvision(jax.device_get(v), model))
decay = [p for n, p in net.named_parameters() if p.ndim > 1]
no_decay = [p for n, p in net.named_parameters() if p.ndim <= 1]
topt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3)
xtt, ytt = torch.from_numpy(xt.transpose(0, 3, 1, 2)), torch.from_numpy(yt)
for s in range(100):
  params, bs, opt, l = step(params, bs, opt)
  net.train(); topt.zero_grad()
  tl = torch.nn.functional.cross_entropy(net(xtt), ytt); tl.backward(); topt.step()
  if s % 10 == 0 or s == 99:
    print(f"step {s:3d} flax loss {float(l):.4f} torch loss {tl.item():.4f}", flush=True)
rest = np.setdiff1d(np.arange(len(y)), idx)
fe = np.asarray(model.apply({"params": params, "batch_stats": bs}, x[rest], train=False)).argmax(-1)
net.eval()
with torch.no_grad():
  te = net(torch.from_numpy(x[rest].transpose(0, 3, 1, 2))).numpy().argmax(-1)
print(f"eval top-1 flax {np.mean(fe == y[rest]) * 100:.1f} % torch {np.mean(te == y[rest]) * 100:.1f} %")
