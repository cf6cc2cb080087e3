//! The constant-delay line: `shoal-netem`'s timing core, with no IO and no clock of its own.
//!
//! Call order: [`DelayLine::push`] each arriving item with the time it arrived, then drain
//! [`DelayLine::pop_due`] with the current time until it returns `None`, then sleep until
//! [`DelayLine::next_deadline`] (or the next arrival, whichever is first).

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// A FIFO that releases each item `delay` after it was pushed.
///
/// The delay is the same for every item, so release order is arrival order (as with netem's
/// constant delay: no reordering). Due times never decrease: an item pushed with an earlier
/// `now` than the item before it is released no sooner than that item. The line holds at
/// most `capacity` items; [`push`](Self::push) hands the item back when it is full.
#[derive(Debug)]
pub struct DelayLine<T> {
    delay: Duration,
    capacity: usize,
    /// (due time, item), due times non-decreasing from front to back.
    items: VecDeque<(Instant, T)>,
}

/// [`DelayLine::push`] found the line full; the item is handed back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Full<T>(pub T);

impl<T> fmt::Debug for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Full(..)")
    }
}

impl<T> fmt::Display for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("delay line full")
    }
}

impl<T> std::error::Error for Full<T> {}

impl<T> DelayLine<T> {
    /// An empty line that delays every item by `delay` and holds at most `capacity` items.
    #[must_use]
    pub fn new(delay: Duration, capacity: usize) -> Self {
        Self {
            delay,
            capacity,
            items: VecDeque::new(),
        }
    }

    /// Takes `item`, which arrived at `now`; returns the time it will be due.
    ///
    /// # Errors
    ///
    /// [`Full`] with the item when the line already holds `capacity` items.
    pub fn push(&mut self, now: Instant, item: T) -> Result<Instant, Full<T>> {
        if self.items.len() >= self.capacity {
            return Err(Full(item));
        }
        let mut due = now + self.delay;
        if let Some(&(last, _)) = self.items.back() {
            // Keep FIFO order even if a caller's clock readings are not monotonic.
            due = due.max(last);
        }
        self.items.push_back((due, item));
        Ok(due)
    }

    /// The oldest item if it is due at `now` (its due time is not after `now`).
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        match self.items.front() {
            Some(&(due, _)) if due <= now => self.items.pop_front().map(|(_, item)| item),
            _ => None,
        }
    }

    /// When the oldest item is due, if the line holds any.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        self.items.front().map(|&(due, _)| due)
    }

    /// Removes every item, due or not, oldest first (to release them all at shutdown).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.items.drain(..).map(|(_, item)| item)
    }

    /// Items held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the line holds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The most items the line holds.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The delay every item gets.
    #[must_use]
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn line(delay_ms: u32, capacity: usize) -> (Instant, DelayLine<u32>) {
        (Instant::now(), DelayLine::new(MS * delay_ms, capacity))
    }

    #[test]
    fn empty_line_has_nothing_due_and_no_deadline() {
        let (t0, mut l) = line(20, 4);
        assert!(l.is_empty());
        assert_eq!(l.next_deadline(), None);
        assert_eq!(l.pop_due(t0 + MS * 1000), None);
    }

    #[test]
    fn item_leaves_exactly_after_the_delay() {
        let (t0, mut l) = line(20, 4);
        assert_eq!(l.push(t0, 1), Ok(t0 + MS * 20));
        assert_eq!(l.next_deadline(), Some(t0 + MS * 20));
        assert_eq!(l.pop_due(t0), None);
        assert_eq!(l.pop_due(t0 + MS * 20 - Duration::from_nanos(1)), None);
        assert_eq!(l.pop_due(t0 + MS * 20), Some(1));
        assert!(l.is_empty());
    }

    #[test]
    fn items_leave_in_arrival_order_each_at_its_own_time() {
        let (t0, mut l) = line(10, 8);
        for i in 0..5 {
            l.push(t0 + MS * i, i).unwrap();
        }
        assert_eq!(l.len(), 5);
        // At t0+12 ms the items that arrived at 0, 1 and 2 ms are due, no more.
        let now = t0 + MS * 12;
        let due: Vec<u32> = std::iter::from_fn(|| l.pop_due(now)).collect();
        assert_eq!(due, vec![0, 1, 2]);
        assert_eq!(l.next_deadline(), Some(t0 + MS * 13));
        let now = t0 + MS * 100;
        let due: Vec<u32> = std::iter::from_fn(|| l.pop_due(now)).collect();
        assert_eq!(due, vec![3, 4]);
    }

    #[test]
    fn a_late_clock_reading_does_not_reorder() {
        let (t0, mut l) = line(10, 8);
        l.push(t0 + MS * 5, 1).unwrap();
        // Pushed with an earlier `now`: still due no sooner than the item before it.
        assert_eq!(l.push(t0, 2), Ok(t0 + MS * 15));
        assert_eq!(l.pop_due(t0 + MS * 15), Some(1));
        assert_eq!(l.pop_due(t0 + MS * 15), Some(2));
    }

    #[test]
    fn full_line_hands_the_item_back_and_keeps_the_rest() {
        let (t0, mut l) = line(10, 2);
        l.push(t0, 1).unwrap();
        l.push(t0, 2).unwrap();
        assert_eq!(l.push(t0, 3), Err(Full(3)));
        assert_eq!(l.len(), 2);
        assert_eq!(l.pop_due(t0 + MS * 10), Some(1));
        // Room again.
        assert!(l.push(t0 + MS * 10, 3).is_ok());
    }

    #[test]
    fn zero_capacity_takes_nothing() {
        let (t0, mut l) = line(10, 0);
        assert_eq!(l.push(t0, 7), Err(Full(7)));
    }

    #[test]
    fn zero_delay_is_due_at_once() {
        let (t0, mut l) = line(0, 2);
        l.push(t0, 9).unwrap();
        assert_eq!(l.pop_due(t0), Some(9));
    }

    #[test]
    fn drain_releases_everything_oldest_first() {
        let (t0, mut l) = line(1000, 8);
        for i in 0..4 {
            l.push(t0, i).unwrap();
        }
        assert_eq!(l.drain().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert!(l.is_empty());
        assert_eq!(l.next_deadline(), None);
    }
}
