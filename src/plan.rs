//! Packing sequences into decode batches: a pure function, testable without a model.
//!
//! The plan is made from the whole dataset up front, so the same inputs always give the same
//! batch layout (llama.cpp's numbers depend on it) and a run's work is known before it starts.

/// The limits of one decode call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Most tokens in one batch.
    pub tokens: usize,
    /// Most sequences in one batch.
    pub sequences: usize,
}

/// Groups sequences (given by their lengths) into batches within `capacity`, longest first,
/// so sequences of similar length share a decode. Each batch lists sequence indices.
///
/// # Panics
/// When a single sequence is longer than `capacity.tokens`; callers check lengths first.
pub fn pack(lengths: &[usize], capacity: Capacity) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut used = 0;
    for i in order {
        assert!(
            lengths[i] <= capacity.tokens,
            "sequence {i} exceeds the batch"
        );
        match batches.last_mut() {
            Some(batch)
                if used + lengths[i] <= capacity.tokens && batch.len() < capacity.sequences =>
            {
                batch.push(i);
                used += lengths[i];
            }
            _ => {
                batches.push(vec![i]);
                used = lengths[i];
            }
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_within_capacity_and_covers_every_sequence_once() {
        let lengths = [5, 1, 9, 3, 3, 7, 2, 10, 4];
        let capacity = Capacity {
            tokens: 10,
            sequences: 3,
        };
        let batches = pack(&lengths, capacity);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for batch in &batches {
            assert!(batch.len() <= 3);
            assert!(batch.iter().map(|&i| lengths[i]).sum::<usize>() <= 10);
        }
        assert_eq!(batches[0], [7], "longest first");
        assert_eq!(pack(&lengths, capacity), batches, "deterministic");
    }
}
