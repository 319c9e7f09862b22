//! The chaos run itself: its mesh config and the kill/restart loop.

use super::*;

/// The run's config: `weights` on the first load service. Health actions are switched off
/// (no bans, no circuit), so any refused connect would be a routing failure, not a policy.
pub fn chaos_config(load: &[SocketAddr], echo: &[SocketAddr], weights: &[u32]) -> String {
    let quiet = |s: ServiceYaml| {
        HealthService::new(s)
            .with("outlier", "{max_banned_percent: 0}")
            .with("circuit", "{min_success_ratio: 0}")
    };
    health_mesh(
        &[
            quiet(
                ServiceYaml::new("chaos-load", VIPS[0], "weighted_random").backends(load, weights),
            ),
            quiet(ServiceYaml::new("chaos-rr", VIPS[1], "round_robin").backends(load, &[1, 1, 1])),
            quiet(
                ServiceYaml::new("chaos-echo", VIPS[2], "weighted_random").backends(echo, &[1, 1]),
            ),
        ],
        &[],
    )
}

/// The run's VIPs: two load services and the echo service.
pub const VIPS: [SocketAddr; 3] = [
    SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 100, 70, 1)),
        18700,
    ),
    SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 100, 70, 2)),
        18700,
    ),
    SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 100, 70, 3)),
        18700,
    ),
];

/// Runs the scenario; `interrupted` is polled between kills (xtask's Ctrl-C). Errors are
/// for a run that could not be carried out; broken promises are in the report's
/// [`ChaosReport::violations`].
pub fn run(opts: &ChaosOptions, interrupted: &dyn Fn() -> Result<()>) -> Result<ChaosReport> {
    let started = Instant::now();
    let mut rng = Rng::new(opts.seed);
    let load = loopback_addrs(2, 3, 18701);
    let echo = loopback_addrs(5, 2, 18702);
    let weights = [[1, 1, 2], [2, 1, 1]];
    let load_set = TcpBackendSet::start(&load, BackendMode::Identify)?;
    let echo_set = TcpBackendSet::start(&echo, BackendMode::Echo)?;
    let mut bed = TestBed::start(&opts.name, &chaos_config(&load, &echo, &weights[0]))?;
    let pins = bed.bpffs().path().to_path_buf();
    let before = Snapshot::scan()?;
    ensure!(
        !before.owned_by(&pins).is_empty(),
        "the agent pinned nothing under {}",
        pins.display()
    );

    // Bounds for the clients: far beyond the expected run time, so they only end a hang.
    let bound = Duration::from_secs(60)
        + (opts.max_uptime + Duration::from_millis(500)) * opts.kills as u32;
    let holder = Holder::start(&bed, VIPS[2], opts.long_lived, bound)?;
    let stop = bed.dir().join("load-stop");
    let clients = [VIPS[0], VIPS[1]]
        .iter()
        .map(|vip| {
            ConnectClient::new(*vip, 10_000_000)
                .interval(Duration::from_millis(1))
                .until_file(&stop)
                .max_time(bound)
                .spawn(Some(bed.cgroup()), None)
        })
        .collect::<Result<Vec<_>>>()?;
    thread::sleep(Duration::from_millis(200));

    let mut ready_times = Vec::new();
    let (mut early_kills, mut reloads) = (0, 0);
    let mut last_ready = Duration::from_millis(10);
    let mut current_weights = 0;
    let mut spawned = Instant::now();
    let is_early = |i: usize| {
        opts.early_kill_every > 0 && i % opts.early_kill_every == opts.early_kill_every - 1
    };
    for i in 0..opts.kills {
        interrupted()?;
        // The agent runs: ready (measured below), or just spawned if this kill is early.
        let pause = if is_early(i) {
            early_kills += 1;
            rng.duration(last_ready)
        } else {
            if opts.reload_every > 0 && i % opts.reload_every == 0 {
                current_weights = 1 - current_weights;
                bed.write_config(&chaos_config(&load, &echo, &weights[current_weights]))?;
                reloads += 1;
            }
            rng.duration(opts.max_uptime)
        };
        let until = Instant::now() + pause;
        // Keep the admin API and metrics busy meanwhile, so kills also land mid-request.
        while Instant::now() < until {
            if rng.next_u64().is_multiple_of(4) {
                let _ = bed.agent().get("/status");
            }
            thread::sleep((until - Instant::now()).min(Duration::from_millis(20)));
        }
        sigkill(bed.agent())?;
        // Reap the killed process first, so the time below is the new agent's alone.
        bed.agent().sigterm()?;
        spawned = Instant::now();
        bed.agent().restart()?;
        if is_early(i + 1) {
            continue;
        }
        let t = wait_ready_since(bed.agent(), spawned, READY_GIVE_UP)?;
        ready_times.push(t);
        last_ready = t;
    }
    if opts.kills > 0 && is_early(opts.kills) {
        ready_times.push(wait_ready_since(bed.agent(), spawned, READY_GIVE_UP)?);
    }
    // The last config written is live and the survivor adopted the pins.
    let yaml = chaos_config(&load, &echo, &weights[current_weights]);
    let status = bed
        .agent()
        .wait_fingerprint(&crate::fingerprint_of(&yaml)?, Duration::from_secs(10))?;
    ensure!(
        opts.kills == 0 || status["adopted"] == true,
        "the last agent did not adopt the pins: {status:#}"
    );

    std::fs::write(&stop, "")?;
    let reports: Vec<ClientReport> = clients
        .into_iter()
        .map(|c| c.wait())
        .collect::<Result<_>>()?;
    let held = holder.finish()?;
    let leaks = LeakCheck::against(&before, &pins, Duration::from_secs(3))?;
    let owned_before = before.owned_by(&pins);

    let connects = reports.iter().map(|r| r.results.len()).sum();
    let failed_connects = reports
        .iter()
        .flat_map(|r| r.failures())
        .map(|f| format!("{:?} (peer {:?})", f.error, f.peer))
        .collect();
    let pings = held.iter().map(|h| h.pings).sum();
    let broken = held
        .iter()
        .filter(|h| !h.last_ok || h.error.is_some())
        .map(|h| format!("{:?} via {:?}: {:?}", h.backend, h.peer, h.error))
        .collect();
    let long_lived = held.len();
    ensure!(
        long_lived == opts.long_lived,
        "the holder reported {long_lived} connections, not {}",
        opts.long_lived
    );
    ensure!(
        echo_set.backends().iter().all(|b| b.accepts() > 0) || opts.long_lived < 2,
        "long-lived connections did not spread over the echo backends"
    );
    let ok_connects = reports
        .iter()
        .map(|r| r.results.iter().filter(|c| c.ok()).count())
        .sum::<usize>();
    ensure!(
        load_set.total_accepts() as usize >= ok_connects,
        "the backends accepted {} connections, fewer than the {ok_connects} the clients saw answered",
        load_set.total_accepts()
    );

    // Cleanup (stop + `sockmesh-agent cleanup`) leaves none of the run's objects.
    drop(bed);
    // The kernel frees a program's maps after an RCU grace period and a work item, so a map
    // can outlive its program by a moment: wait for that, boundedly.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after_cleanup = Snapshot::scan()?;
    while Instant::now() < deadline
        && after_cleanup
            .all_ids()
            .iter()
            .any(|id| owned_before.all_ids().contains(id))
    {
        thread::sleep(Duration::from_millis(100));
        after_cleanup = Snapshot::scan()?;
    }
    let left_after_cleanup = Snapshot {
        progs: after_cleanup
            .progs
            .into_iter()
            .filter(|(id, _)| owned_before.progs.contains_key(id))
            .collect(),
        maps: after_cleanup
            .maps
            .into_iter()
            .filter(|(id, _)| owned_before.maps.contains_key(id))
            .collect(),
        links: after_cleanup
            .links
            .into_iter()
            .filter(|(id, _)| owned_before.links.contains_key(id))
            .collect(),
    };
    Ok(ChaosReport {
        seed: opts.seed,
        kills: opts.kills,
        early_kills,
        reloads,
        ready_times,
        connects,
        failed_connects,
        long_lived,
        pings,
        broken,
        leaks,
        left_after_cleanup,
        elapsed: started.elapsed(),
    })
}
