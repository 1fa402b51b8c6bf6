# Helpers for scripts that run local daemons (scripts/dev-services, scripts/control-plane):
# start one in the background with a pid file, tell whether it is still ours, wait for it to be
# ready, stop it. The sourcing script sets ROOT, DEV (the daemons' home: they run there, and a
# process is only taken for ours when its working directory lies inside it), RUN (pid files)
# and LOGS; it may redefine logs_of after sourcing this file.

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Log files of a daemon, the one that gets its stdout/stderr first.
logs_of() { # name
    printf '%s\n' "$LOGS/$1.log"
}

pid_file() { printf '%s/%s.pid\n' "$RUN" "$1"; }

# True when the pid in NAME's pid file is alive and still the program we started: the
# command line names it and its working directory lies in .dev/ (spawn puts it there), so a
# recycled pid, or someone else's daemon of the same kind, is never taken for, or killed as,
# ours. A stale pid file is removed. A daemon still exec'ing its way in (this script's own
# subshell, setsid, env, the program) shows an empty or intermediate command line for an
# instant: that is looked at again before the pid file goes, or a live daemon would be
# orphaned.
is_running() { # name cmdline-substring
    local file pid cmdline cwd tries
    file="$(pid_file "$1")"
    [ -f "$file" ] || return 1
    pid="$(cat "$file" 2>/dev/null || true)"
    for tries in 1 2 3 4 5; do
        [[ "$pid" =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/cmdline" ] || break
        [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || break
        cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
        cwd="$(readlink "/proc/$pid/cwd" 2>/dev/null || true)"
        if [[ "$cmdline" == *"$2"* ]] && [[ "$cwd" == "$DEV" || "$cwd" == "$DEV"/* ]]; then
            return 0
        fi
        case "$cmdline" in
            "" | setsid\ * | env\ *) sleep 0.1 ;;
            # spawn's subshell, not yet exec'd (on a machine busy enough to outlast its wait).
            "$(tr '\0' ' ' <"/proc/$$/cmdline" 2>/dev/null)") sleep 0.1 ;;
            *) break ;;
        esac
    done
    rm -f "$file"
    return 1
}

running_pid() { cat "$(pid_file "$1")"; }

# setsid: the daemon leaves our session and process group, so a Ctrl-C or a job runner that
# kills our group after `start` returns does not take the services down with it. The cd keeps
# stray relative files (crash dumps and the like) inside .dev/. Without job control a
# background job is no group leader, so setsid execs in place and $! is the daemon's pid.
spawn() { # name command...
    local name=$1 logfile
    shift
    logfile="$(logs_of "$name" | head -n 1)"
    mkdir -p "$RUN" "$LOGS" "$(dirname "$logfile")"
    # 9>&-: the daemon must not inherit (and so hold forever) the lock of take_lock.
    (cd "$DEV" && exec setsid "$@") >>"$logfile" 2>&1 </dev/null 9>&- &
    local pid=$! self tries=0
    echo "$pid" >"$(pid_file "$name")"
    # Until the background subshell has exec'd, its command line is still this script's, and
    # is_running would take it for a daemon that died (and delete its pid file) on a busy
    # machine. Wait for the exec (a few ms; at most 5 s).
    self="$(tr '\0' ' ' <"/proc/$$/cmdline")"
    while [ "$tries" -lt 100 ] && [ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" = "$self" ]; do
        sleep 0.05
        tries=$((tries + 1))
    done
}

port_open() { # port
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Someone else on our port would make every check below pass against the wrong server.
ensure_port_free() { # service port
    if port_open "$2"; then
        die "$1: port 127.0.0.1:$2 is already taken by another program (set ${3:-its port variable} to move it)"
    fi
}

# Polls CHECK until it succeeds; fails with the service's log tail if the process dies or
# TIMEOUT seconds pass.
wait_until() { # name cmdline-substring timeout check...
    local name=$1 pattern=$2 timeout=$3
    shift 3
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ! is_running "$name" "$pattern"; then
            fail_with_log "$name exited during start-up" "$name"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            fail_with_log "$name not ready after ${timeout}s" "$name"
        fi
        sleep 0.5
    done
}

fail_with_log() { # message name
    local f
    printf 'error: %s\n' "$1" >&2
    while IFS= read -r f; do
        [ -f "$f" ] || continue
        printf -- '--- last lines of %s\n' "${f#"$ROOT"/}" >&2
        tail -n 30 "$f" >&2
    done < <(logs_of "$2")
    exit 1
}

# Graceful first (SIGTERM lets MariaDB flush InnoDB and RabbitMQ close its queues), then KILL.
stop_process() { # service name cmdline-substring timeout
    local service=$1 name=$2 pattern=$3 timeout=$4 pid
    if ! is_running "$name" "$pattern"; then
        rm -f "$(pid_file "$name")"
        return 0
    fi
    pid="$(running_pid "$name")"
    log "stopping $service (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + timeout))
    while is_running "$name" "$pattern"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$service did not stop within ${timeout}s, killing it"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.3
    done
    rm -f "$(pid_file "$name")"
}

# Processes of ours (running the program /NAME, with a working directory in $DEV, as spawn
# leaves them) that no pid file names any more: one taken for dead during its start-up, say,
# whose pid file went, would hold its port and make every later start fail. The program is
# told by the executable itself, not the command line, which a `tail -f log/NAME.log` run
# from there would match too.
stop_strays() { # /NAME
    local pid exe cwd strays=()
    for pid in $(pgrep -f -- "$1" 2>/dev/null || true); do
        [ "$pid" != "$$" ] || continue
        exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
        exe="${exe% (deleted)}"
        cwd="$(readlink "/proc/$pid/cwd" 2>/dev/null || true)"
        if [[ "$exe" == *"$1" ]] && [[ "$cwd" == "$DEV" || "$cwd" == "$DEV"/* ]]; then
            strays+=("$pid")
        fi
    done
    [ "${#strays[@]}" -gt 0 ] || return 0
    log "stopping ${strays[*]}: ${1#/} left without a pid file"
    kill -TERM "${strays[@]}" 2>/dev/null || true
    local deadline=$((SECONDS + 10)) p
    for p in "${strays[@]}"; do
        while [ -e "/proc/$p" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ]; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                kill -KILL "$p" 2>/dev/null || true
                break
            fi
            sleep 0.2
        done
    done
}

# One command at a time per state folder: start, stop and the like hold $RUN/lock (fd 9, which
# spawn keeps from the daemons).
take_lock() {
    mkdir -p "$RUN"
    exec 9>"$RUN/lock"
    flock -w 900 9 || die "another ${0##*/} command holds ${RUN#"$ROOT"/}/lock"
}
