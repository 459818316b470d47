"""An unoptimised, step-by-step re-statement of the SCOT reference semantics.

Written for the parity tests: it follows the order of operations of the paper's code
(normalise, then resize; per-layer walk through the bottlenecks; one-class-at-a-time CAM;
cosine as F·Gᵀ / (|F| |G|ᵀ); the Sinkhorn iteration with column vectors; dense
N x 2 x M Hough votes truncated with ``.long()``; keypoint transfer through one-hot
neighbour masks), deliberately sharing no code with the ``scot`` package.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

JUMP = [4, 4, 4, 4, 8, 8, 8, 8, 16, 16]
RF = [11, 19, 27, 35, 43, 59, 75, 91, 107, 139]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def resize(img: torch.Tensor, kps: torch.Tensor, side: int = 300):
    """img (3, H, W) already normalised; kps (2, K)."""
    size = torch.tensor(img.unsqueeze(0).size()).float()
    ratio = side / torch.max(size)
    img = F.interpolate(img.unsqueeze(0), size=(int(size[2] * ratio), int(size[3] * ratio)), mode="bilinear", align_corners=False)
    return img[0], kps.float() * ratio, ratio


class ReferenceSCOT:
    def __init__(self, resnet, hyperpixel_ids, exp2=0.5, eps=0.05, cam=True):
        self.net = resnet.eval()
        self.ids = list(hyperpixel_ids)
        self.exp2, self.eps, self.cam = exp2, eps, cam
        self.blocks = [b for layer in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4) for b in layer]

    # ---------------------------------------------------------------- features
    def _walk(self, img):
        net = self.net
        feats = []
        feat = net.maxpool(net.relu(net.bn1(net.conv1(img))))
        if 0 in self.ids:
            feats.append(feat.clone())
        for hid, block in enumerate(self.blocks):
            res = feat
            feat = block.relu(block.bn1(block.conv1(feat)))
            feat = block.relu(block.bn2(block.conv2(feat)))
            feat = block.bn3(block.conv3(feat))
            if block.downsample is not None:
                res = block.downsample(res)
            feat = feat + res
            if hid + 1 in self.ids:
                feats.append(feat.clone())
            feat = torch.relu(feat)
        logits = net.fc(torch.flatten(net.avgpool(feat), 1))
        return feats, feat, logits

    def _cam(self, img, feat_map, logits):
        sz = (img.size(2), img.size(3))
        maps = []
        for scale in (1.0, 1.5, 2.0):
            if scale > 1.0:
                img = F.interpolate(img, (int(scale * sz[0]), int(scale * sz[1])), None, "bilinear", True)
                _, feat_map, logits = self._walk(img)
            labels = torch.topk(F.softmax(logits, dim=1), k=2, dim=1)[1][0]
            _, nc, h, w = feat_map.size()
            per_label = []
            for label in labels:
                cam = self.net.fc.weight[label, :].unsqueeze(0).mm(feat_map.view(nc, h * w)).view(1, 1, h, w)
                cam = F.interpolate(cam, (sz[0], sz[1]), None, "bilinear", True)[0, 0]
                per_label.append((cam - cam.min()) / cam.max())
            maps.append(torch.stack(per_label).max(dim=0)[0])
        total = torch.stack(maps).sum(0)
        return total / (total.max() + 1e-5)

    def hyperpixels(self, img):
        feats, feat_map, logits = self._walk(img.unsqueeze(0))
        for i in range(1, len(feats)):
            feats[i] = F.interpolate(feats[i], tuple(feats[0].size()[2:]), None, "bilinear", True)
        hyper = torch.cat(feats, dim=1)[0]
        jump, rf = JUMP[self.ids[0]], RF[self.ids[0]]
        h, w = hyper.shape[1:]
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        xs, ys = xs.reshape(-1).float(), ys.reshape(-1).float()
        box = torch.stack((xs * jump - rf // 2, ys * jump - rf // 2, xs * jump + rf // 2, ys * jump + rf // 2), 1)
        feats_flat = hyper.view(hyper.size(0), -1).t()
        weights = torch.ones(len(feats_flat), 1)
        if self.cam:
            cam = self._cam(img.unsqueeze(0), feat_map, logits)
            cx = box[:, 0] + (box[:, 2] - box[:, 0]) // 2
            cy = box[:, 1] + (box[:, 3] - box[:, 1]) // 2
            sel = cam[cy.long(), cx.long()]
            weights = 0.5 * torch.ones(len(feats_flat), 1)
            weights[sel > 0.4, :] = 0.8
            weights[sel > 0.5, :] = 0.9
            weights[sel > 0.6, :] = 1.0
        return box, feats_flat, (img.size(2), img.size(1)), weights

    # ---------------------------------------------------------------- matching
    def votes(self, src, trg):
        f, g = src[1], trg[1]
        sim = (f @ g.t()) / (f.norm(dim=1).unsqueeze(1) @ g.norm(dim=1).unsqueeze(0))
        cost = 1 - torch.clamp(sim, min=0)
        mu, nu = src[3] / src[3].sum(), trg[3] / trg[3].sum()
        eps = self.eps
        while True:
            K = torch.exp(-cost / eps)
            a = torch.ones(cost.shape[0], 1) / cost.shape[0]
            b = nu / (K.t() @ a)
            a = mu / (K @ b)
            plan = a * K * b.t()  # diag(a) K diag(b), elementwise
            if not torch.isnan(plan).any():
                break
            eps *= 2.0
        return torch.clamp(plan * cost.shape[0], min=0) ** self.exp2

    def rhm(self, votes, src, trg, ncells=8192):
        src_box, trg_box, src_size, trg_size = src[0], trg[0], src[2], trg[2]
        width, height = src_size[0] + trg_size[0], src_size[1] + trg_size[1]
        cell = math.sqrt(width * height / ncells)
        nbx, nby = int(width / cell) + 1, int(height / cell) + 1

        def centre(box):
            return torch.stack((box[:, 0] + (box[:, 2] - box[:, 0]) // 2, box[:, 1] + (box[:, 3] - box[:, 1]) // 2), 1)

        ref = torch.tensor(src_size, dtype=torch.float)
        sc, tc = centre(src_box), centre(trg_box)
        xy = (ref.unsqueeze(0) - sc).unsqueeze(2).repeat(1, 1, len(trg_box)) + tc.t().unsqueeze(0).repeat(len(src_box), 1, 1)
        ids = (xy / cell).long()
        bins = ids[:, 0, :] + ids[:, 1, :] * nbx
        hspace = torch.zeros(len(votes), nby * nbx)
        flat = bins + torch.arange(len(votes)).mul(hspace.size(1)).unsqueeze(1)
        hspace = hspace.view(-1).index_add(0, flat.view(-1), votes.reshape(-1)).view_as(hspace).sum(0)
        side = 7
        sig = side / 2 / 2.354
        ax = torch.arange(-3, 4).float()
        g = torch.exp(-(ax.view(1, -1) ** 2 / 2 / sig**2 + ax.view(-1, 1) ** 2 / 2 / sig**2))
        g = g / g.sum()
        hspace = F.conv2d(hspace.view(1, 1, nby, nbx), g[None, None], padding=3).view(-1)
        return votes * hspace[bins.view(-1)].view_as(votes)

    @staticmethod
    def transfer(src_box, trg_box, kps, confidence):
        best = confidence.max(dim=1)[1]
        k = kps.shape[1]
        inside = ((kps[0].unsqueeze(1) >= src_box[:, 0]) & (kps[1].unsqueeze(1) >= src_box[:, 1])
                  & (kps[0].unsqueeze(1) <= src_box[:, 2]) & (kps[1].unsqueeze(1) <= src_box[:, 3]))  # (K, N)
        preds = torch.zeros(2, k)
        for kk in range(k):
            idx = torch.nonzero(inside[kk]).flatten()
            total = torch.zeros(2)
            for i in idx.tolist():
                total += trg_box[best[i], :2] + kps[:, kk] - src_box[i, :2]
            preds[:, kk] = total / len(idx)
        return preds

    @torch.no_grad()
    def predict(self, src_img01, trg_img01, src_kps):
        """Images (3, H, W) in [0, 1] at original size, kps (2, K) original px -> prediction (2, K) resized frame."""
        s_img, s_kps, _ = resize((src_img01 - MEAN) / STD, src_kps)
        t_img, _, _ = resize((trg_img01 - MEAN) / STD, torch.zeros(2, 1))
        src, trg = self.hyperpixels(s_img), self.hyperpixels(t_img)
        votes = self.votes(src, trg)
        confidence = self.rhm(votes, src, trg)
        return self.transfer(src[0], trg[0], s_kps, confidence), confidence
