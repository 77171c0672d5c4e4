//! Per-topic sequence tracking: counts unique deliveries, duplicates and
//! reorderings without a per-message bitmap.
//!
//! Sequence numbers start at 1 per topic. The tracker remembers the highest
//! seq seen and the gaps below it (as inclusive ranges). A late arrival that
//! fills a gap is a reordering; anything at or below the highest seq that is
//! not in a gap is a duplicate. Loss is `published - unique` at the end.

/// At most this many gap ranges are remembered per topic; beyond it the
/// oldest gaps are forgotten (a very late arrival into a forgotten gap would
/// then count as a duplicate instead of a reordering — only under massive
/// loss, which is reported anyway).
const MAX_GAPS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time this seq arrived, in order (higher than all before).
    InOrder,
    /// First time, but lower than an already seen seq.
    Reordered,
    /// Already seen.
    Duplicate,
}

#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    last: u64,
    gaps: Vec<(u64, u64)>,
    pub unique: u64,
    pub duplicates: u64,
    pub reordered: u64,
}

impl SeqTracker {
    pub fn observe(&mut self, seq: u64) -> Seen {
        if seq > self.last {
            if seq > self.last + 1 {
                if self.gaps.len() >= MAX_GAPS {
                    self.gaps.remove(0);
                }
                self.gaps.push((self.last + 1, seq - 1));
            }
            self.last = seq;
            self.unique += 1;
            return Seen::InOrder;
        }
        // Late arrivals are most likely to fill a recent gap: search backwards.
        if let Some(i) = self
            .gaps
            .iter()
            .rposition(|&(lo, hi)| lo <= seq && seq <= hi)
        {
            let (lo, hi) = self.gaps[i];
            match (seq == lo, seq == hi) {
                (true, true) => {
                    self.gaps.remove(i);
                }
                (true, false) => self.gaps[i].0 = seq + 1,
                (false, true) => self.gaps[i].1 = seq - 1,
                (false, false) => {
                    self.gaps[i] = (lo, seq - 1);
                    self.gaps.insert(i + 1, (seq + 1, hi));
                }
            }
            self.unique += 1;
            self.reordered += 1;
            return Seen::Reordered;
        }
        self.duplicates += 1;
        Seen::Duplicate
    }

    /// Seqs below the highest one seen that have not arrived.
    #[cfg(test)]
    pub fn missing(&self) -> u64 {
        self.gaps.iter().map(|&(lo, hi)| hi - lo + 1).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order() {
        let mut t = SeqTracker::default();
        for s in 1..=100 {
            assert_eq!(t.observe(s), Seen::InOrder);
        }
        assert_eq!(
            (t.unique, t.duplicates, t.reordered, t.missing()),
            (100, 0, 0, 0)
        );
    }

    #[test]
    fn loss_and_late_fill() {
        let mut t = SeqTracker::default();
        for s in [1, 2, 6, 7] {
            assert_eq!(t.observe(s), Seen::InOrder);
        }
        assert_eq!(t.missing(), 3);
        assert_eq!(t.observe(4), Seen::Reordered);
        assert_eq!(t.missing(), 2);
        assert_eq!(t.observe(3), Seen::Reordered);
        assert_eq!(t.observe(5), Seen::Reordered);
        assert_eq!(t.missing(), 0);
        assert_eq!(t.observe(5), Seen::Duplicate);
        assert_eq!(t.observe(7), Seen::Duplicate);
        assert_eq!((t.unique, t.duplicates, t.reordered), (7, 2, 3));
    }

    #[test]
    fn first_seq_missing() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(3), Seen::InOrder);
        assert_eq!(t.missing(), 2);
        assert_eq!(t.observe(1), Seen::Reordered);
        assert_eq!(t.observe(2), Seen::Reordered);
        assert_eq!(t.missing(), 0);
        assert_eq!(t.observe(0), Seen::Duplicate);
    }

    #[test]
    fn gap_edges() {
        let mut t = SeqTracker::default();
        t.observe(1);
        t.observe(10); // gap 2..=9
        assert_eq!(t.observe(2), Seen::Reordered);
        assert_eq!(t.observe(9), Seen::Reordered);
        assert_eq!(t.missing(), 6);
        assert_eq!(t.observe(2), Seen::Duplicate);
        assert_eq!(t.observe(9), Seen::Duplicate);
    }

    #[test]
    fn gaps_are_bounded() {
        let mut t = SeqTracker::default();
        for s in (1..).step_by(2).take(MAX_GAPS + 10) {
            t.observe(s);
        }
        assert!(t.gaps.len() <= MAX_GAPS);
    }
}
