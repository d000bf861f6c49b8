//! Handoff between workers: each worker has an inbox, a bounded lock-free queue of
//! parcels (frame bytes plus the port they came in on). Parcels are allocated once and
//! recycled through a second queue, so a handoff copies bytes but never allocates.
#![deny(unsafe_code)]

use std::sync::Arc;

use crossbeam::queue::ArrayQueue;

use crate::io::Port;

/// A frame travelling to the worker that owns its state.
#[derive(Debug)]
pub struct Parcel {
    from: Port,
    len: usize,
    bytes: Box<[u8]>,
}

impl Parcel {
    /// The port the frame arrived on.
    pub fn from(&self) -> Port {
        self.from
    }

    /// The frame's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// One worker's inbox.
#[derive(Debug)]
pub struct Inbox {
    full: ArrayQueue<Parcel>,
    empty: ArrayQueue<Parcel>,
}

impl Inbox {
    fn new(slots: usize, slot_size: usize) -> Self {
        let inbox = Inbox {
            full: ArrayQueue::new(slots),
            empty: ArrayQueue::new(slots),
        };
        for _ in 0..slots {
            let parcel = Parcel {
                from: Port::Lan,
                len: 0,
                bytes: vec![0; slot_size].into_boxed_slice(),
            };
            inbox
                .empty
                .push(parcel)
                .expect("queue sized for every parcel");
        }
        inbox
    }

    /// The next parcel, if any. Give it back with [`Inbox::give_back`] once read.
    pub fn take(&self) -> Option<Parcel> {
        self.full.pop()
    }

    /// Returns a read parcel for reuse.
    pub fn give_back(&self, parcel: Parcel) {
        // Cannot fail: exactly as many parcels exist as places in `empty`.
        let _ = self.empty.push(parcel);
    }

    /// Parcels waiting.
    pub fn len(&self) -> usize {
        self.full.len()
    }

    /// Whether no parcel is waiting.
    pub fn is_empty(&self) -> bool {
        self.full.is_empty()
    }
}

/// The inboxes of every worker in a pool.
#[derive(Debug)]
pub struct Mesh {
    inboxes: Vec<Inbox>,
}

impl Mesh {
    /// Inboxes for `workers` workers, each with `slots` parcels of `slot_size` bytes.
    pub fn new(workers: usize, slots: usize, slot_size: usize) -> Arc<Self> {
        Arc::new(Mesh {
            inboxes: (0..workers).map(|_| Inbox::new(slots, slot_size)).collect(),
        })
    }

    /// Worker `index`'s inbox.
    pub fn inbox(&self, index: usize) -> &Inbox {
        &self.inboxes[index]
    }

    /// Copies `bytes` into a parcel for worker `to`. Returns false when that inbox is
    /// full, the worker does not exist or the frame is larger than a parcel.
    pub fn send(&self, to: usize, from: Port, bytes: &[u8]) -> bool {
        let Some(inbox) = self.inboxes.get(to) else {
            return false;
        };
        let Some(mut parcel) = inbox.empty.pop() else {
            return false;
        };
        if bytes.len() > parcel.bytes.len() {
            inbox.give_back(parcel);
            return false;
        }
        parcel.bytes[..bytes.len()].copy_from_slice(bytes);
        parcel.len = bytes.len();
        parcel.from = from;
        // Cannot fail: the parcel came from this inbox's own `empty` queue.
        let _ = inbox.full.push(parcel);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parcels_are_bounded_and_recycled() {
        let mesh = Mesh::new(2, 2, 16);
        assert!(mesh.send(1, Port::Wan, b"one"));
        assert!(mesh.send(1, Port::Lan, b"two"));
        assert!(!mesh.send(1, Port::Lan, b"three"), "inbox of 2 is full");
        assert!(!mesh.send(0, Port::Lan, &[0; 17]), "larger than a parcel");
        assert!(!mesh.send(2, Port::Lan, b"x"), "no such worker");
        let inbox = mesh.inbox(1);
        let p = inbox.take().unwrap();
        assert_eq!((p.from(), p.bytes()), (Port::Wan, &b"one"[..]));
        inbox.give_back(p);
        assert!(mesh.send(1, Port::Lan, b"four"));
        assert_eq!(inbox.len(), 2);
    }
}
