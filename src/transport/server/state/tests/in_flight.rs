// SPDX-License-Identifier: MPL-2.0
//! The state's invariants: descriptors in flight, and the stranded connections that keep
//! them.

use super::*;

/// A packet sent to consumer `cid` that it has not read: the kernel says so.
fn unread(s: &Shared, cid: u64) {
    let c = s.consumers.iter().find(|c| c.peer.id == cid).unwrap();
    crate::transport::socket::send(std::os::fd::AsFd::as_fd(&*c.sock), b"unread", &[]).unwrap();
}

/// Consumer `cid` releases buffer `id` (read it, and every packet before it).
fn release(s: &mut Shared, cid: u64, id: u64) {
    let c = s.consumers.iter_mut().find(|c| c.peer.id == cid).unwrap();
    let (_, blocks) = c.peer.release(id).unwrap();
    s.pins.unpin(&blocks);
}

#[test]
fn the_kernel_refusing_descriptors_drops_nobody() {
    // Review of issue 27: the send that failed with ETOOMANYREFS got its consumer dropped,
    // the good one, while connections that read nothing kept the descriptors in flight.
    // Dropping the one that keeps the most would not help either: what is in its queue stays
    // charged to us until it reads or closes it.
    let mut s = shared();
    s.limits.max_pinned_blocks = 1 << 20;
    s.max_in_flight = 40;
    consumer(&mut s, 1, 10); // reads and releases everything
    consumer(&mut s, 2, 20);
    consumer(&mut s, 3, 30);
    hoard(&mut s, 2, 100, 20);
    hoard(&mut s, 3, 200, 5);
    hold(&mut s, 1, 300, &[blk(300, 4096)]);
    release(&mut s, 1, 300);
    unread(&s, 2);
    unread(&s, 3);
    assert_eq!(s.too_many_refs(1, 301), Some((2, 20)));
    assert_eq!(ids(&s), vec![1, 2, 3]);
}

#[test]
fn a_consumer_whose_releases_lag_is_not_charged_for_what_it_read() {
    // Releases come in batches (memfdsrc gathers 8 while busy): the kernel's word that it
    // read every packet sent before clears its count before anyone is judged by it.
    let mut s = shared();
    s.limits.max_pinned_blocks = 1 << 20;
    s.max_in_flight = 20;
    consumer(&mut s, 1, 10); // read everything, released nothing yet
    consumer(&mut s, 2, 20);
    hoard(&mut s, 1, 100, 12);
    hoard(&mut s, 2, 200, 9);
    unread(&s, 2);
    assert_eq!(s.too_many_refs(2, 300), Some((2, 9)));
    assert_eq!(s.consumers[0].peer.in_flight(), 0);
    // Its release shows consumer 2 read the first five.
    release(&mut s, 2, 204);
    assert_eq!(s.consumers[1].peer.in_flight(), 4);
}

/// Consumer `cid` is sent a packet with `n` descriptors (of /dev/null), left unread in its
/// queue; they are counted in flight for it, as buffer `id`'s announced blocks.
fn sent_unread(s: &mut Shared, cid: u64, id: u64, n: u64) {
    let null = std::fs::File::open("/dev/null").unwrap();
    let fds: Vec<_> = (0..n).map(|_| std::os::fd::AsFd::as_fd(&null)).collect();
    let c = s.consumers.iter().find(|c| c.peer.id == cid).unwrap();
    crate::transport::socket::send(std::os::fd::AsFd::as_fd(&*c.sock), b"unread", &fds).unwrap();
    let blocks: Vec<_> = (0..n).map(|b| blk(id * 100 + b, 4096)).collect();
    hold(s, cid, id, &blocks);
}

/// Reads what is queued at consumer `cid`'s end; returns the descriptors that came.
fn read_queue(cid: u64) -> usize {
    let peers = PEERS.lock().unwrap();
    let (_, ours) = peers.iter().find(|(id, _)| *id == cid).unwrap();
    let mut buf = vec![0u8; crate::transport::wire::MAX_MESSAGE];
    let mut n = 0;
    while let Ok(crate::transport::socket::Received::Packet(_, fds)) =
        crate::transport::socket::recv(std::os::fd::AsFd::as_fd(ours), &mut buf, Duration::ZERO)
    {
        n += fds.len();
    }
    n
}

#[test]
fn a_consumer_dropped_with_descriptors_unread_stays_charged_to_its_user_until_they_are_read() {
    // Review of issue 27: the sink forgot what a dropped consumer kept in flight; its peer,
    // keeping its end open, kept it charged to our user in the kernel, cycle after cycle.
    let mut s = shared();
    s.limits.max_pinned_blocks = 1 << 20;
    s.max_in_flight = 40;
    consumer(&mut s, 7001, 10); // the good one, user 1010
    consumer(&mut s, 7002, 20); // user 1020
    consumer(&mut s, 7003, 20);
    sent_unread(&mut s, 7002, 1, 15);
    sent_unread(&mut s, 7003, 2, 15);
    s.drop_consumer(7002, "test").finish();
    s.drop_consumer(7003, "test").finish();
    assert_eq!((s.stranded.len(), s.stranded.total()), (2, 30));
    let user = |uid| {
        Some(Cred {
            pid: 99,
            uid,
            gid: uid,
        })
    };
    // Over its share (what the 30 stranded leave of 40, for the one consumer left): its
    // user is refused, no other.
    assert!(s.refusal(user(1020)).is_some_and(|(_, rest)| rest));
    assert!(s.refusal(user(1010)).is_none());
    assert_eq!(s.stats.consumers_refused, 1);
    // Nothing read yet: nothing released.
    assert!(s.release_stranded().is_empty());
    // One of them reads its queue: released; 15 left, within the share (25 now): its user
    // may join.
    assert_eq!(read_queue(7002), 15);
    assert_eq!(s.release_stranded().len(), 1);
    assert_eq!((s.stranded.len(), s.stranded.total()), (1, 15));
    assert!(s.refusal(user(1020)).is_none());
    // The other hangs up: the kernel purges its queue, and it is released too.
    PEERS.lock().unwrap().retain(|(id, _)| *id != 7003);
    assert_eq!(s.release_stranded().len(), 1);
    assert_eq!((s.stranded.len(), s.stranded.total()), (0, 0));
    // A consumer dropped with nothing unread is closed at once.
    consumer(&mut s, 7004, 40);
    hoard(&mut s, 7004, 500, 3);
    s.drop_consumer(7004, "test").finish();
    assert_eq!(s.stranded.len(), 0);
}

#[test]
fn every_stranded_connection_stays_counted_and_while_they_keep_the_bound_nobody_joins() {
    // Fourth review of issue 27: past max-consumers + 32 stranded connections (6 users of
    // 31 connections), a dropped one was closed and what it kept in flight no longer
    // counted; the kernel's limit was reached and the stream stopped for everyone.
    let mut s = shared();
    s.limits.max_pinned_blocks = 1 << 20;
    s.limits.max_consumers = 2;
    s.max_in_flight = 40;
    let user = |uid| {
        Some(Cred {
            pid: 99,
            uid,
            gid: uid,
        })
    };
    let strand = |s: &mut Shared, ids: std::ops::RangeInclusive<u64>| {
        for id in ids {
            consumer(s, id, id as i32 + 100); // a user each
            sent_unread(s, id, id, 1);
            s.drop_consumer(id, "test").finish();
        }
    };
    // 50 users, one connection each with a descriptor unread: past the old bound (34).
    strand(&mut s, 8001..=8050);
    assert_eq!((s.stranded.len(), s.stranded.total()), (50, 50));
    assert!(
        s.refusal(user(99)).is_none(),
        "refused below half again the bound"
    );
    // 10 more: they keep half again the bound (60); nobody new joins, not even with a
    // hello.
    strand(&mut s, 8051..=8060);
    assert_eq!((s.stranded.len(), s.stranded.total()), (60, 60));
    assert!(s.refusal(user(99)).is_some_and(|(_, rest)| rest));
    assert!(s.refusal(None).is_some());
    let (ours, theirs) = seqpacket_pair();
    s.admit(Conn::new(theirs), user(99)).finish(); // connected before: says hello now
    let id = s.consumers[0].peer.id;
    let refused = s.stats.consumers_refused;
    s.handle(id, &Message::Hello { max_blocks: 64 }.encode(), 0)
        .finish();
    assert!(ids(&s).is_empty(), "a hello was accepted");
    assert_eq!(s.stats.consumers_refused, refused + 1);
    drop(ours);
    // Ten hang up: the kernel purges their queues, they are released (in turn, at most
    // POLL looked at each time), and there is room again.
    for id in 8001..=8010 {
        PEERS.lock().unwrap().retain(|(i, _)| *i != id);
    }
    let mut released = 0;
    for _ in 0..60usize.div_ceil(stranded::POLL) {
        released += s.release_stranded().len();
    }
    assert_eq!((released, s.stranded.total()), (10, 50));
    assert!(s.refusal(user(99)).is_none());
    for id in 8011..=8060 {
        PEERS.lock().unwrap().retain(|(i, _)| *i != id);
    }
    for _ in 0..50usize.div_ceil(stranded::POLL) {
        released += s.release_stranded().len();
    }
    assert_eq!((released, s.stranded.len()), (60, 0));
}

#[test]
fn a_look_at_the_stranded_connections_costs_a_bounded_number_of_ioctls_and_takes_turns() {
    // None is forgotten now, so a look at them is bounded instead: POLL at most, in turn.
    let mut s = shared();
    s.limits.max_pinned_blocks = 1 << 20;
    s.max_in_flight = 1 << 16;
    let n = stranded::POLL as u64 + 10;
    for id in 10_001..=10_000 + n {
        consumer(&mut s, id, id as i32);
        sent_unread(&mut s, id, id, 1);
        s.drop_consumer(id, "test").finish();
    }
    // The first ten keep their queues unread, the others hang up.
    for id in 10_011..=10_000 + n {
        PEERS.lock().unwrap().retain(|(i, _)| *i != id);
    }
    let poll = stranded::POLL;
    assert_eq!(
        s.release_stranded().len(),
        poll - 10,
        "more than POLL looked at"
    );
    assert_eq!(
        s.release_stranded().len(),
        10,
        "the rest not looked at next"
    );
    assert_eq!(s.stranded.len(), 10);
    for id in 10_001..=10_010 {
        PEERS.lock().unwrap().retain(|(i, _)| *i != id);
    }
    assert_eq!(s.release_stranded().len(), 10);
}
