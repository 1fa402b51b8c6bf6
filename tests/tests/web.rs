//! The web page in a real browser against the whole system, on the runner and on Spin: Debian's
//! Chromium, headless, driven over WebDriver (chromedriver, with the fantoccini client). A user
//! signs in (a wrong password first), picks two videos, watches them upload and convert, opens
//! the download link (the MP3 checked), deletes a job, reloads (still signed in), reloads again
//! in the middle of an upload and picks the file again (it goes on where it stopped), clicks a
//! download link older than its lifetime (the page gets a new one), and signs out. The browser
//! reaches the app through a proxy that can hold an answer, to stop an upload at a known byte.
//! A screenshot of the page is kept in `target/web/` (the README's is one of them).
//!
//! Chromium and chromedriver come from Debian (`scripts/dev-services install`); `CHROMIUM` and
//! `CHROMEDRIVER` name others.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use system_tests::http::{send, send_raw, Body};
use system_tests::services::TcpProxy;
use system_tests::system::{free_port, make_noisy_video, make_video, probe, System, PASSWORD};
use system_tests::{on_each_runtime, root, Runtime, TempDir};

on_each_runtime!(a_user_converts_videos_in_the_browser);

const WAIT: Duration = Duration::from_secs(90);
/// The page's upload pieces (`PIECE` in app.js).
const PIECE: usize = 8 << 20;
/// Download links live this long here, so that the test can see one go stale.
const LINK_TTL_SECS: u64 = 20;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The `expires` of a signed download link.
fn expires_of(link: &str) -> u64 {
    link.split(['?', '&'])
        .find_map(|part| part.strip_prefix("expires="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no expires in {link}"))
}

/// chromedriver on a free port, stopped on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Self {
        let binary =
            std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let port = free_port();
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{binary}: {e} (install Chromium and chromedriver: scripts/dev-services install)")
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            // No sandbox (tests may run as root); no calls home (the network here is closed).
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1000,720",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session")
}

/// Waits until `check` answers, or fails with `what` and the app's log.
async fn until<T, F, Fut>(what: &str, system: &System, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            system.app.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn text_of(client: &Client, css: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The rows of the jobs table: (file, status).
async fn rows(client: &Client) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for row in client
        .find_all(Locator::Css("#jobs tbody tr"))
        .await
        .unwrap_or_default()
    {
        let cells = row.find_all(Locator::Css("td")).await.unwrap_or_default();
        if cells.len() >= 2 {
            found.push((
                cells[0].text().await.unwrap_or_default(),
                cells[1].text().await.unwrap_or_default(),
            ));
        }
    }
    found
}

/// Clicks the element `locator` finds.
async fn click(client: &Client, locator: Locator<'_>) {
    client
        .find(locator)
        .await
        .expect("the element to click")
        .click()
        .await
        .unwrap();
}

/// Waits until the element with id `id` is shown.
async fn until_shown(client: &Client, system: &System, what: &str, id: &str) {
    until(what, system, || async {
        let element = client.find(Locator::Id(id)).await.ok()?;
        element.is_displayed().await.ok()?.then_some(())
    })
    .await
}

/// Signs in with the form, and waits for the signed-in page.
async fn sign_in(client: &Client, system: &System, email: &str, password: &str) {
    for (id, value) in [("email", email), ("password", password)] {
        let field = client.find(Locator::Id(id)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }
    click(client, Locator::Css("#login-form button")).await;
    until_shown(client, system, "the signed-in page", "app").await;
    assert_eq!(text_of(client, "#user").await, email);
}

/// Clicks "Sign out" and waits for the sign-in form.
async fn sign_out(client: &Client, system: &System) {
    click(client, Locator::Id("logout")).await;
    until_shown(client, system, "the sign-in form", "signin").await;
}

/// Waits until the row of `file` says `done`.
async fn until_done(client: &Client, system: &System, what: &str, file: &str) {
    until(what, system, || async {
        rows(client)
            .await
            .iter()
            .any(|(name, status)| name == file && status == "done")
            .then_some(())
    })
    .await
}

fn a_user_converts_videos_in_the_browser(runtime: Runtime) {
    let system = System::start_with(runtime, |app| {
        app.env(
            "SPIN_VARIABLE_DOWNLOAD_LINK_TTL_SECS",
            LINK_TTL_SECS.to_string(),
        )
    });
    let proxy = TcpProxy::start(system.app.base().trim_start_matches("http://"));
    let page_url = |path: &str| format!("http://{}{path}", proxy.address());
    let dir = TempDir::new("web");
    let (first, second) = (
        dir.path().join("first.mp4"),
        dir.path().join("second clip.mp4"),
    );
    make_video(&first, 2, "320x240");
    make_video(&second, 3, "320x240");

    // The page and its files are served with their security headers.
    let page = send_raw("GET", &system.app.url("/"), &[], Body::Empty).unwrap();
    assert_eq!(page.status, 200);
    let csp = page
        .header("content-security-policy")
        .unwrap_or_default()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(
        send("GET", &system.app.url("/static/app.js"), &[], None).status,
        200
    );

    let driver = Driver::start();
    let runtime_name = runtime.name();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        let client = browser(&driver, &dir.path().join("profile")).await;
        client.goto(&page_url("/")).await.expect("opening the page");
        assert_eq!(client.title().await.unwrap(), "MP3 converter");

        // A wrong password, then the right one.
        let email = client.find(Locator::Id("email")).await.unwrap();
        email.send_keys(&system.email).await.unwrap();
        let password = client.find(Locator::Id("password")).await.unwrap();
        password.send_keys("not the password").await.unwrap();
        click(&client, Locator::Css("#login-form button")).await;
        let error = until("the refusal", &system, || async {
            Some(text_of(&client, "#login-error").await).filter(|t| !t.is_empty())
        })
        .await;
        assert!(error.contains("invalid credentials (401)"), "{error}");
        sign_in(&client, &system, &system.email, PASSWORD).await;

        // Two videos picked at once: each uploads, converts, and offers its MP3.
        let input = client.find(Locator::Id("files")).await.unwrap();
        input
            .send_keys(&format!("{}\n{}", first.display(), second.display()))
            .await
            .expect("picking the files");
        let done = until("both jobs done", &system, || async {
            let rows = rows(&client).await;
            (rows.len() == 2 && rows.iter().all(|(_, status)| status == "done")).then_some(rows)
        })
        .await;
        let mut names: Vec<&str> = done.iter().map(|(file, _)| file.as_str()).collect();
        names.sort();
        assert_eq!(names, ["first.mp4", "second clip.mp4"]);

        let shot = root().join("target/web");
        std::fs::create_dir_all(&shot).unwrap();
        let png = client.screenshot().await.expect("a screenshot");
        std::fs::write(shot.join(format!("page-{runtime_name}.png")), png).unwrap();

        // The download link works as a plain link, without the token.
        let link = client
            .find(Locator::XPath(
                "//tr[td[1]='second clip.mp4']//a[text()='Download']",
            ))
            .await
            .expect("the second clip's download link");
        assert_eq!(
            link.attr("download").await.unwrap().as_deref(),
            Some("second clip.mp3")
        );
        let href = link.prop("href").await.unwrap().expect("an href");
        let mp3 = send_raw("GET", &href, &[], Body::Empty).unwrap();
        assert_eq!(mp3.status, 200, "{}", mp3.text());
        let saved = dir.path().join("downloaded.mp3");
        std::fs::write(&saved, &mp3.body).unwrap();
        let (seconds, format) = probe(&saved);
        assert_eq!(format, "mp3");
        assert!((seconds - 3.0).abs() < 0.5, "{seconds} s");

        // Delete the first job: gone from the page and from the server.
        click(
            &client,
            Locator::XPath("//tr[td[1]='first.mp4']//button[text()='Delete']"),
        )
        .await;
        until("the row to go", &system, || async {
            (rows(&client).await.len() == 1).then_some(())
        })
        .await;

        // A reload keeps the session (the tab's storage) and lists what is left.
        client.refresh().await.unwrap();
        let left = until("the list after a reload", &system, || async {
            Some(rows(&client).await).filter(|rows| !rows.is_empty())
        })
        .await;
        assert_eq!(
            left,
            vec![("second clip.mp4".to_owned(), "done".to_owned())]
        );

        // A reload in the middle of an upload, once its first piece is stored (the answer to it
        // held back); the same file picked again goes on from there.
        let long = dir.path().join("long take.mp4");
        make_noisy_video(&long, 12);
        let bytes = std::fs::read(&long).unwrap();
        assert!(bytes.len() > PIECE + (1 << 20), "{} bytes", bytes.len());
        proxy.hold_replies_to(&bytes[PIECE - 32..PIECE], Duration::from_secs(60));
        let pick = |path: &Path| {
            let path = path.display().to_string();
            let client = &client;
            async move {
                let input = client.find(Locator::Id("files")).await.unwrap();
                input.send_keys(&path).await.expect("picking the file");
            }
        };
        pick(&long).await;
        let row = "//tr[td[1]='long take.mp4']";
        let upload = until("the upload's id", &system, || async {
            let tr = client.find(Locator::XPath(row)).await.ok()?;
            tr.attr("data-job").await.ok()?.filter(|id| !id.is_empty())
        })
        .await;
        let token = system.login();
        let offset = || {
            send(
                "HEAD",
                &system.app.url(&format!("/uploads/{upload}")),
                &[
                    ("Authorization", &format!("Bearer {token}")),
                    ("Tus-Resumable", "1.0.0"),
                ],
                None,
            )
            .header("upload-offset")
            .map(str::to_owned)
        };
        until("the first piece stored", &system, || async {
            (offset() == Some(PIECE.to_string())).then_some(())
        })
        .await;
        client.refresh().await.unwrap();
        proxy.hold_replies_to(b"\0never\0", Duration::ZERO);
        until("the page after the reload", &system, || async {
            (!rows(&client).await.is_empty()).then_some(())
        })
        .await;
        pick(&long).await;
        until_done(
            &client,
            &system,
            "the resumed upload converted",
            "long take.mp4",
        )
        .await;
        let tr = client.find(Locator::XPath(row)).await.unwrap();
        assert_eq!(
            tr.attr("data-job").await.unwrap().as_deref(),
            Some(upload.as_str()),
            "the same upload went on, none was started anew"
        );
        assert!(
            !system.app.log().contains("outcome=tus_offset_mismatch"),
            "the page asked where the upload was before sending, not after a 409\n{}",
            system.app.log()
        );
        let remembered = client
            .execute("return localStorage.getItem('unfinished-uploads')", vec![])
            .await
            .unwrap();
        assert_eq!(
            remembered,
            serde_json::json!("{}"),
            "nothing left to resume"
        );
        let link = client
            .find(Locator::XPath(&format!("{row}//a[text()='Download']")))
            .await
            .expect("the long take's download link");
        let href = link.prop("href").await.unwrap().expect("an href");
        let mp3 = send_raw("GET", &href, &[], Body::Empty).unwrap();
        assert_eq!(mp3.status, 200, "{}", mp3.text());
        std::fs::write(&saved, &mp3.body).unwrap();
        let (seconds, _) = probe(&saved);
        assert!(
            (seconds - 12.0).abs() < 0.5,
            "{seconds} s: the whole video arrived"
        );

        // A link past its lifetime says so; clicked on the page, it is replaced by a new one.
        let second = "//tr[td[1]='second clip.mp4']//a[text()='Download']";
        let stale = client
            .find(Locator::XPath(second))
            .await
            .unwrap()
            .prop("href")
            .await
            .unwrap()
            .expect("an href");
        while now_secs() <= expires_of(&stale) {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let reply = send_raw("GET", &stale, &[], Body::Empty).unwrap();
        assert_eq!((reply.status, reply.text().as_str()), (403, "link expired"));
        click(&client, Locator::XPath(second)).await;
        let fresh = until("a new link", &system, || async {
            let link = client.find(Locator::XPath(second)).await.ok()?;
            link.prop("href").await.ok()?.filter(|href| *href != stale)
        })
        .await;
        assert!(expires_of(&fresh) > now_secs(), "{fresh}");
        let reply = send_raw("GET", &fresh, &[], Body::Empty).unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());

        // Output options, chosen before picking a file: a mono second of it, titled.
        click(&client, Locator::Css("#output summary")).await;
        let field = |css: &'static str| {
            let client = &client;
            async move { client.find(Locator::Css(css)).await.expect(css) }
        };
        field("#options-form select[name=preset]")
            .await
            .select_by_value("voice")
            .await
            .unwrap();
        for (css, value) in [
            ("#options-form input[name=start]", "0.5"),
            ("#options-form input[name=end]", "1.5"),
            ("#options-form input[name=title]", "From the page"),
        ] {
            field(css).await.send_keys(value).await.unwrap();
        }
        pick(&first).await;
        until_done(&client, &system, "the trimmed job done", "first.mp4").await;
        let trimmed = "//tr[td[1]='first.mp4']";
        let tooltip = client
            .find(Locator::XPath(&format!("{trimmed}/td[1]")))
            .await
            .unwrap()
            .attr("title")
            .await
            .unwrap()
            .unwrap_or_default();
        assert_eq!(
            tooltip, "preset voice, 64 kb/s, mono, 0.5 s to 1.5 s, \"From the page\"",
            "the options are shown"
        );
        let href = client
            .find(Locator::XPath(&format!("{trimmed}//a[text()='Download']")))
            .await
            .unwrap()
            .prop("href")
            .await
            .unwrap()
            .expect("an href");
        let mp3 = send_raw("GET", &href, &[], Body::Empty).unwrap();
        assert_eq!(mp3.status, 200, "{}", mp3.text());
        std::fs::write(&saved, &mp3.body).unwrap();
        let (seconds, _) = probe(&saved);
        assert!((seconds - 1.0).abs() < 0.1, "{seconds} s: trimmed");

        // A sign-out the server never heard of is not shown as one: the session stays.
        proxy.go_down();
        click(&client, Locator::Id("logout")).await;
        let said = until("the refused sign-out", &system, || async {
            Some(text_of(&client, "#status").await).filter(|t| t.starts_with("Not signed out"))
        })
        .await;
        assert_eq!(said, "Not signed out: the server cannot be reached.");
        assert!(client
            .find(Locator::Id("app"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap());
        proxy.come_up();

        // Signing out while three uploads wait for their first piece's answer (held) and a
        // fourth file waits its turn: none of them goes on, and nothing of them reaches the next
        // person to sign in at this browser.
        let takes: Vec<_> = (1..=4)
            .map(|n| dir.path().join(format!("take {n}.mp4")))
            .collect();
        for take in &takes {
            std::fs::copy(&long, take).unwrap();
        }
        let hold = Duration::from_secs(6);
        proxy.hold_replies_to(&bytes[PIECE - 32..PIECE], hold);
        let picked: Vec<String> = takes.iter().map(|p| p.display().to_string()).collect();
        let input = client.find(Locator::Id("files")).await.unwrap();
        input.send_keys(&picked.join("\n")).await.unwrap();
        until("three uploads created", &system, || async {
            let started = client
                .find_all(Locator::Css("#jobs tbody tr[data-job]"))
                .await
                .ok()?;
            let mut takes = 0;
            for row in started {
                let file = row.find(Locator::Css("td")).await.ok()?.text().await.ok()?;
                takes += usize::from(file.starts_with("take "));
            }
            (takes == 3).then_some(())
        })
        .await;
        sign_out(&client, &system).await;
        let other = format!("other-{}", system.email);
        let (ok, output) = system_tests::admin(
            &system.db.url(),
            &["user", "add", &other],
            &format!("{PASSWORD}\n"),
        );
        assert!(ok, "{output}");
        sign_in(&client, &system, &other, PASSWORD).await;
        // Past the held answers, and long enough for a fourth upload and its job to be made.
        tokio::time::sleep(hold + Duration::from_secs(6)).await;
        assert_eq!(
            rows(&client).await,
            Vec::new(),
            "the page shows the other's uploads"
        );
        let theirs = send(
            "GET",
            &system.app.url("/jobs"),
            &[(
                "Authorization",
                &format!("Bearer {}", system.login_as(&other)),
            )],
            None,
        );
        let theirs: serde_json::Value = serde_json::from_str(&theirs.body).unwrap();
        assert_eq!(theirs["jobs"], serde_json::json!([]), "{theirs}");
        sign_out(&client, &system).await;
        client.close().await.expect("closing the browser");
    });
    let token = system.login();
    let listed = send(
        "GET",
        &system.app.url("/jobs"),
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    );
    let listed: serde_json::Value = serde_json::from_str(&listed.body).unwrap();
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(3), "{listed}");
}
