"""Integration with the real `pretrain-prepare` output (session fixture `prepared_demo`)."""
import collections

from pretrain.data import build_eval_loader, build_train_loader, check_vocab_size
from pretrain.data.config import DataConfig, ObjectiveConfig
from pretrain.shardformat import load_manifest


def test_prepared_directory_streams_every_document_once(prepared_demo):
    manifest = load_manifest(prepared_demo)
    check_vocab_size(manifest, manifest.vocab_size)
    data = DataConfig(path=prepared_demo, max_seq_len=128, micro_batch_size=16, num_workers=1)
    obj = ObjectiveConfig(masking="whole_word")
    examples = collections.Counter()
    for rank in (0, 1):
        for b in build_train_loader(data, obj, rank, 2, epochs=1, with_ids=True):
            examples.update(zip(b["doc_id"].tolist(), b["example_index"].tolist()))
    assert set(examples.values()) == {1}
    seen = {d for d, _ in examples}
    assert len(seen) == manifest.splits["train"].documents   # prepare drops empty documents
    valid = [d for r in (0, 1) for b in build_eval_loader(data, obj, r, 2, with_ids=True) for d in b["doc_id"].tolist()]
    assert set(valid).isdisjoint(seen) and len(set(valid)) == manifest.splits["valid"].documents


def test_evaluation_masks_at_its_own_rate_whatever_training_uses(prepared_demo):
    """A modern recipe trains at 30% masking; eval/mlm_acc stays at 15% so runs compare."""
    data = DataConfig(path=prepared_demo, max_seq_len=128, micro_batch_size=16, num_workers=0)
    obj = ObjectiveConfig(mlm_probability=0.3, eval_mlm_probability=0.15, sentence_task="none")

    def rate(batches) -> float:
        masked = maskable = 0
        for b in batches:
            masked += int((b["labels"] != -100).sum())
            maskable += int(b["attention_mask"].sum()) - 2 * int(b["cu_seqlens"].numel() - 1)  # less [CLS]/[SEP]
        return masked / maskable

    train = build_train_loader(data, obj, 0, 1, epochs=1)
    assert abs(rate(b for _, b in zip(range(20), train)) - 0.30) < 0.01
    assert abs(rate(build_eval_loader(data, obj, 0, 1)) - 0.15) < 0.01
