"""The browsers a test starts are its own: a driver's port that another process took before the
driver bound it (chromedriver for Chromium, Marionette in Firefox) is left for another one."""

import pytest

from tests.browser.pages import ChatPage, launch
from tests.helpers import held_port

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("holder", ["listening", "bound"])
def test_a_browser_whose_driver_port_was_taken_meanwhile_starts_on_another(engine, server, tmp_path,
                                                                            ports_taken_first, holder):
    """A free port found for the browser's driver but taken before the driver binds it, by a
    listener that never answers (what selenium and marionette_driver would take for their driver)
    or by a socket bound there (the driver cannot bind it): the driver starts on another port, and
    the browser shows the chat page, connected."""
    with held_port(holder) as taken:
        ports_taken_first(taken)
        browser = launch(engine, tmp_path, 800, 600, mobile=False)
    try:
        assert (browser.driver.service.port if engine == "chromium" else browser.m.port) != taken
        page = ChatPage(browser, f"http://127.0.0.1:{server.port}", engine).open("/")
        assert page.online()
    finally:
        browser.quit()
