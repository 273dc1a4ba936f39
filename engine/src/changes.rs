//! A bounded record of the items changed since a snapshot mirror's last sync, so that the sync
//! copies only those (see `snapshot.rs`). Past its bound it stops recording and says so: the
//! mirror is then copied whole. Windows (payments a refund changes) and holds keep one.

/// The keys (window positions, hold ids) of changed items.
#[derive(Clone, Debug, Default)]
pub(crate) enum ChangeLog<K> {
    /// Nothing recorded: no mirror is kept.
    #[default]
    Off,
    /// The keys changed, in order, repeats included; at most `max`.
    On { changed: Vec<K>, max: usize },
    /// More than `max` changes came: the mirror's next sync copies everything.
    Overflowed { max: usize },
}

impl<K> ChangeLog<K> {
    /// A record of at most `max` changes between two syncs.
    pub(crate) fn start(max: usize) -> ChangeLog<K> {
        ChangeLog::On {
            changed: Vec::new(),
            max,
        }
    }

    pub(crate) fn record(&mut self, key: K) {
        match self {
            ChangeLog::On { changed, max } if changed.len() < *max => changed.push(key),
            ChangeLog::On { max, .. } => *self = ChangeLog::Overflowed { max: *max },
            ChangeLog::Off | ChangeLog::Overflowed { .. } => {}
        }
    }

    /// Whether every change since the last sync is recorded (not off, not overflowed).
    pub(crate) fn is_complete(&self) -> bool {
        matches!(self, ChangeLog::On { .. })
    }

    pub(crate) fn is_overflowed(&self) -> bool {
        matches!(self, ChangeLog::Overflowed { .. })
    }

    /// Hands each recorded change to `apply` and records afresh from here (an overflowed
    /// record starts again empty; one that is off stays off).
    pub(crate) fn drain(&mut self, apply: impl FnMut(K)) {
        match self {
            ChangeLog::On { changed, .. } => changed.drain(..).for_each(apply),
            ChangeLog::Overflowed { max } => *self = ChangeLog::start(*max),
            ChangeLog::Off => {}
        }
    }

    /// The changes recorded, while every one is.
    #[cfg(test)]
    pub(crate) fn recorded(&self) -> Option<&[K]> {
        match self {
            ChangeLog::On { changed, .. } => Some(changed),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_records_up_to_its_bound_then_overflows_until_drained() {
        let mut log = ChangeLog::Off;
        log.record(1);
        assert!(
            !log.is_complete() && !log.is_overflowed(),
            "off records nothing"
        );
        let mut log = ChangeLog::start(2);
        log.record(1);
        log.record(1);
        assert_eq!(log.recorded(), Some(&[1, 1][..]), "repeats included");
        let mut seen = vec![];
        log.drain(|key| seen.push(key));
        assert_eq!((seen, log.recorded()), (vec![1, 1], Some(&[][..])));
        for key in 0..3 {
            log.record(key);
        }
        assert!(
            log.is_overflowed() && !log.is_complete(),
            "three past a bound of two"
        );
        log.drain(|_| panic!("an overflowed log hands out nothing"));
        assert_eq!(log.recorded(), Some(&[][..]), "recording again, empty");
    }
}
