//! The VM view: one window per open VM with the guest's screen and, for kernel-testing
//! VMs, a serial console tab.
//!
//! The screen comes from the helper's RFB socket through [`vnc_session`] (vnc-rs on a
//! tokio thread); frames arrive here as component inputs and land in a [`ScreenView`],
//! which re-uploads only the tiles they touch. Keys go to the guest as scancodes (GTK's
//! hardware keycode through [`keymap`]) with their keysym beside, the pointer as absolute
//! positions; the session sends both down its input channel. The header bar has a
//! keyboard-grab toggle (system shortcuts go to the guest while it is on), Ctrl+Alt+Del,
//! fullscreen and a menu with the lifecycle actions, which the library window carries
//! out. When the VM's display follows the window, a new window size becomes a resolution
//! request (ExtendedDesktopSize) once the size has been still for 300 ms.
//!
//! The serial console reads `serial.sock` on a thread and sends typed characters back.

use std::cell::Cell;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adw::prelude::*;
use gettextrs::gettext;
use gtk::glib;
use gtk::glib::translate::IntoGlib;
use relm4::{Component, ComponentParts, ComponentSender};

use crate::a11y;
use crate::bench;
use crate::i18n::gettext_f;
use crate::keymap;
use crate::screen_view::ScreenView;
use crate::vm_control::{VmAction, VmRef};
use crate::vnc_session::{self, FrameEvent, InputEvent, Session};

/// X11 keysyms for Ctrl+Alt+Del.
const KEYSYM_CONTROL_L: u32 = 0xffe3;
const KEYSYM_ALT_L: u32 = 0xffe9;
const KEYSYM_DELETE: u32 = 0xffff;

/// How often a failed display connection is tried again before the window says so.
const MAX_RETRIES: u32 = 5;
/// The pause before trying again.
const RETRY_DELAY: Duration = Duration::from_millis(400);

/// What a VM window opens with.
#[derive(Debug, Clone)]
pub struct VmWindowInit {
    /// The VM.
    pub vm: VmRef,
    /// The RFB socket, when the VM has a display.
    pub vnc_socket: Option<PathBuf>,
    /// The serial console socket, for kernel-testing VMs.
    pub serial_socket: Option<PathBuf>,
    /// Window size changes become resolution requests.
    pub follow_window: bool,
}

/// The VM view.
pub struct VmWindow {
    init: VmWindowInit,
    session: Option<Session>,
    status: Option<String>,
    /// The pressed pointer buttons as an RFB mask.
    buttons: u8,
    last_pointer: (u16, u16),
    grabbed: bool,
    fullscreen: bool,
    /// The pointer's distance from the window's top edge, last seen.
    pointer_top: f64,
    /// Reconnections tried since the last frame arrived.
    retries: u32,
    /// Frames received, for the frame-rate probe (`HOSPES_BENCH_FPS`).
    frames: bench::FrameCounter,
    serial: Option<Arc<Mutex<UnixStream>>>,
}

/// What the VM view is told.
#[derive(Debug)]
pub enum VmWindowInput {
    /// A frame event from the session.
    Frame(FrameEvent),
    /// Connect (again) to the display.
    Connect,
    /// A key: keysym, hardware keycode, pressed.
    Key(u32, u32, bool),
    /// The pointer moved to a widget point.
    Motion(f64, f64),
    /// A button changed (RFB bit, pressed).
    Button(u8, bool),
    /// The wheel turned (up when true).
    Wheel(bool),
    /// Toggle the keyboard grab.
    Grab(bool),
    /// Send Ctrl+Alt+Del.
    CtrlAltDel,
    /// Toggle fullscreen.
    Fullscreen,
    /// The window entered (true) or left fullscreen.
    Fullscreened(bool),
    /// The pointer is this far from the top of the window (fullscreen header bar).
    PointerTop(f64),
    /// Hide the fullscreen header bar unless the pointer is on it.
    HideHeader,
    /// The display area has a new size (device pixels).
    AreaResized(u16, u16),
    /// Serial output arrived.
    SerialText(String),
    /// Type into the serial console.
    SerialKey(String),
    /// A lifecycle action from the menu.
    Act(VmAction),
    /// The frame-rate probe starts measuring.
    FpsStart,
    /// The frame-rate probe ended: frames painted in its window.
    FpsReport(u64),
    /// The window closed.
    Closed,
}

/// What the VM view asks of the library window.
#[derive(Debug)]
pub enum VmWindowOutput {
    /// Carry out an action on this VM.
    Act(String, VmAction),
    /// The window closed.
    Closed(String),
}

#[relm4::component(pub)]
impl Component for VmWindow {
    type Init = VmWindowInit;
    type Input = VmWindowInput;
    type Output = VmWindowOutput;
    type CommandOutput = ();

    view! {
        #[root]
        adw::Window {
            set_title: Some(&model.init.vm.name),
            set_default_size: (1024, 720),

            // In fullscreen the header bar moves from the top of `layout` onto `frame`, over
            // the guest's screen, and slides in while the pointer is at the top edge.
            #[name = "frame"]
            gtk::Overlay {
            #[name = "layout"]
            gtk::Box {
                set_orientation: gtk::Orientation::Vertical,

                #[name = "header_revealer"]
                gtk::Revealer {
                set_reveal_child: true,
                set_transition_type: gtk::RevealerTransitionType::SlideDown,
                #[wrap(Some)]
                #[name = "header"]
                set_child = &adw::HeaderBar {
                    #[wrap(Some)]
                    set_title_widget = &gtk::StackSwitcher {
                        set_stack: Some(&pages),
                        set_visible: model.init.serial_socket.is_some()
                            && model.init.vnc_socket.is_some(),
                    },

                    #[name = "grab_button"]
                    pack_start = &gtk::ToggleButton {
                        set_icon_name: "input-keyboard-symbolic",
                        set_tooltip_text: Some(&gettext("Send All Keys to the Guest")),
                        set_sensitive: model.init.vnc_socket.is_some(),
                        #[watch]
                        set_active: model.grabbed,
                        connect_toggled[sender] => move |button| {
                            sender.input(VmWindowInput::Grab(button.is_active()));
                        },
                    },
                    #[name = "cad_button"]
                    pack_start = &gtk::Button {
                        set_label: &gettext("Ctrl+Alt+Del"),
                        set_sensitive: model.init.vnc_socket.is_some(),
                        connect_clicked => VmWindowInput::CtrlAltDel,
                    },

                    #[name = "menu_button"]
                    pack_end = &gtk::MenuButton {
                        set_icon_name: "view-more-symbolic",
                        set_tooltip_text: Some(&gettext("Machine")),

                        #[wrap(Some)]
                        set_popover = &gtk::Popover {
                            gtk::Box {
                                set_orientation: gtk::Orientation::Vertical,
                                gtk::Button {
                                    set_label: &gettext("Pause"),
                                    add_css_class: "flat",
                                    connect_clicked => VmWindowInput::Act(VmAction::Pause),
                                },
                                gtk::Button {
                                    set_label: &gettext("Resume"),
                                    add_css_class: "flat",
                                    connect_clicked => VmWindowInput::Act(VmAction::Resume),
                                },
                                gtk::Button {
                                    set_label: &gettext("Save and Quit"),
                                    add_css_class: "flat",
                                    connect_clicked => VmWindowInput::Act(VmAction::SaveAndQuit),
                                },
                                gtk::Button {
                                    set_label: &gettext("Shut Down"),
                                    add_css_class: "flat",
                                    connect_clicked => VmWindowInput::Act(VmAction::PowerButton),
                                },
                                gtk::Button {
                                    set_label: &gettext("Reset"),
                                    add_css_class: "flat",
                                    connect_clicked => VmWindowInput::Act(VmAction::Reset),
                                },
                                gtk::Button {
                                    set_label: &gettext("Force Off"),
                                    add_css_class: "flat",
                                    add_css_class: "destructive-action",
                                    connect_clicked => VmWindowInput::Act(VmAction::ForceOff),
                                },
                            },
                        },
                    },
                    #[name = "fullscreen_button"]
                    pack_end = &gtk::Button {
                        #[watch]
                        set_icon_name: if model.fullscreen {
                            "view-restore-symbolic"
                        } else {
                            "view-fullscreen-symbolic"
                        },
                        set_tooltip_text: Some(&gettext("Fullscreen (F11)")),
                        connect_clicked => VmWindowInput::Fullscreen,
                    },
                },
                },

                #[name = "pages"]
                gtk::Stack {
                    set_vexpand: true,

                    add_titled[Some("display"), &gettext("Display")] = &gtk::Overlay {
                        set_visible: model.init.vnc_socket.is_some(),
                        add_css_class: "vm-screen",

                        #[local_ref]
                        screen -> ScreenView {
                            set_hexpand: true,
                            set_vexpand: true,
                            set_focusable: true,
                            set_can_focus: true,
                        },

                        add_overlay = &adw::StatusPage {
                            #[watch]
                            set_visible: model.status.is_some(),
                            set_icon_name: Some("video-display-symbolic"),
                            #[watch]
                            set_title: model.status.as_deref().unwrap_or_default(),

                            #[wrap(Some)]
                            set_child = &gtk::Button {
                                set_label: &gettext("Connect Again"),
                                set_halign: gtk::Align::Center,
                                add_css_class: "pill",
                                connect_clicked => VmWindowInput::Connect,
                            },
                        },
                    },

                    add_titled[Some("serial"), &gettext("Serial Console")] = &gtk::ScrolledWindow {
                        set_visible: model.init.serial_socket.is_some(),

                        #[local_ref]
                        console -> gtk::TextView {
                            set_editable: false,
                            set_monospace: true,
                            set_cursor_visible: true,
                            set_wrap_mode: gtk::WrapMode::Char,
                            set_left_margin: 8,
                            set_top_margin: 8,
                        },
                    },
                },
            },
            },

            connect_fullscreened_notify[sender] => move |window| {
                sender.input(VmWindowInput::Fullscreened(window.is_fullscreen()));
            },

            connect_close_request[sender] => move |_| {
                sender.input(VmWindowInput::Closed);
                glib::Propagation::Proceed
            },
        }
    }

    fn init(
        init: Self::Init,
        root: Self::Root,
        sender: ComponentSender<Self>,
    ) -> ComponentParts<Self> {
        let model = VmWindow {
            init,
            session: None,
            status: None,
            buttons: 0,
            last_pointer: (0, 0),
            grabbed: false,
            fullscreen: false,
            pointer_top: f64::MAX,
            retries: 0,
            frames: bench::FrameCounter::default(),
            serial: None,
        };
        let screen = ScreenView::default();
        let console = gtk::TextView::new();
        let widgets = view_output!();
        let mut model = model;

        a11y::set_label(&widgets.grab_button, &gettext("Send All Keys to the Guest"));
        a11y::set_label(&widgets.cad_button, &gettext("Send Ctrl+Alt+Del"));
        a11y::set_label(&widgets.menu_button, &gettext("Machine"));
        a11y::set_label(&widgets.fullscreen_button, &gettext("Fullscreen"));
        a11y::set_label(
            &screen,
            &gettext_f(
                // Translators: the accessible name of the guest's screen; {name} is the
                // virtual machine.
                "Screen of {name}",
                &[("name", &model.init.vm.name)],
            ),
        );
        a11y::set_label(&console, &gettext("Serial Console"));
        install_screen_input(&screen, &sender);
        install_console_input(&console, &sender);
        if model.init.follow_window {
            install_resize_watch(&screen, &sender);
        }
        if model.init.vnc_socket.is_some() {
            widgets.pages.set_visible_child_name("display");
            screen.grab_focus();
            sender.input(VmWindowInput::Connect);
        } else {
            widgets.pages.set_visible_child_name("serial");
        }
        if let Some(socket) = model.init.serial_socket.clone() {
            model.serial = connect_serial(socket, &sender);
        }
        if let Some(window) = bench::fps_window() {
            start_fps_probe(window, &screen, &sender);
        }
        // F11 is caught on its way down to the focused widget: the screen passes every key
        // it gets to the guest. While all keys go to the guest, F11 does too.
        let controller = gtk::ShortcutController::new();
        controller.set_propagation_phase(gtk::PropagationPhase::Capture);
        controller.add_shortcut(gtk::Shortcut::new(
            gtk::ShortcutTrigger::parse_string("F11"),
            Some(gtk::CallbackAction::new({
                let sender = sender.clone();
                let grab_button = widgets.grab_button.clone();
                move |_, _| {
                    if grab_button.is_active() {
                        return glib::Propagation::Proceed;
                    }
                    sender.input(VmWindowInput::Fullscreen);
                    glib::Propagation::Stop
                }
            })),
        ));
        root.add_controller(controller);
        // Watched on the window, on the way down: motion over the guest's screen counts,
        // and so does the window's own edge, where the pointer rests at the screen's top.
        let motion = gtk::EventControllerMotion::new();
        motion.set_propagation_phase(gtk::PropagationPhase::Capture);
        let input = sender.clone();
        motion.connect_motion(move |_, _, y| input.input(VmWindowInput::PointerTop(y)));
        root.add_controller(motion);

        ComponentParts { model, widgets }
    }

    fn update_with_view(
        &mut self,
        widgets: &mut Self::Widgets,
        message: Self::Input,
        sender: ComponentSender<Self>,
        root: &Self::Root,
    ) {
        match message {
            VmWindowInput::Frame(frame) => self.frame(frame, &widgets.screen, &sender),
            VmWindowInput::Connect => {
                if self.session.is_none() {
                    self.connect(&sender);
                }
            }
            VmWindowInput::Key(keysym, keycode, down) => {
                let scancode = keymap::scancode_for_keycode(keycode);
                self.send(InputEvent::Key {
                    keysym,
                    scancode,
                    down,
                });
            }
            VmWindowInput::Motion(x, y) => {
                if let Some((gx, gy)) = widgets.screen.to_guest(x, y) {
                    self.last_pointer = (gx, gy);
                    self.pointer();
                }
            }
            VmWindowInput::Button(bit, pressed) => {
                if pressed {
                    self.buttons |= 1 << bit;
                    widgets.screen.grab_focus();
                } else {
                    self.buttons &= !(1 << bit);
                }
                self.pointer();
            }
            VmWindowInput::Wheel(up) => {
                let bit = if up { 3 } else { 4 };
                self.buttons |= 1 << bit;
                self.pointer();
                self.buttons &= !(1 << bit);
                self.pointer();
            }
            VmWindowInput::Grab(on) => {
                self.grabbed = on;
                if let Some(toplevel) = root
                    .surface()
                    .and_then(|surface| surface.downcast::<gtk::gdk::Toplevel>().ok())
                {
                    if on {
                        toplevel.inhibit_system_shortcuts(None::<&gtk::gdk::Event>);
                    } else {
                        toplevel.restore_system_shortcuts();
                    }
                }
                if on {
                    widgets.screen.grab_focus();
                }
            }
            VmWindowInput::CtrlAltDel => {
                let keys = [KEYSYM_CONTROL_L, KEYSYM_ALT_L, KEYSYM_DELETE]
                    .into_iter()
                    .zip(keymap::CTRL_ALT_DEL);
                for (keysym, scancode) in keys.clone() {
                    self.send(InputEvent::Key {
                        keysym,
                        scancode: Some(scancode),
                        down: true,
                    });
                }
                for (keysym, scancode) in keys.rev() {
                    self.send(InputEvent::Key {
                        keysym,
                        scancode: Some(scancode),
                        down: false,
                    });
                }
            }
            VmWindowInput::Fullscreen => {
                if root.is_fullscreen() {
                    root.unfullscreen();
                } else {
                    root.fullscreen();
                }
            }
            VmWindowInput::Fullscreened(on) if on != self.fullscreen => {
                self.fullscreen = on;
                place_header(widgets, on);
                if on {
                    // Shown for a moment, so a person sees where it went.
                    let sender = sender.clone();
                    glib::timeout_add_local_once(HEADER_HINT, move || {
                        sender.input(VmWindowInput::HideHeader);
                    });
                }
            }
            VmWindowInput::Fullscreened(_) => {}
            VmWindowInput::PointerTop(y) => {
                self.pointer_top = y;
                if !self.fullscreen {
                    return;
                }
                let revealer = &widgets.header_revealer;
                if y <= REVEAL_EDGE {
                    revealer.set_reveal_child(true);
                } else if revealer.reveals_child() && !header_in_use(widgets, y) {
                    revealer.set_reveal_child(false);
                }
            }
            VmWindowInput::HideHeader => {
                if self.fullscreen && !header_in_use(widgets, self.pointer_top) {
                    widgets.header_revealer.set_reveal_child(false);
                }
            }
            VmWindowInput::AreaResized(width, height) => {
                self.send(InputEvent::Resize { width, height });
            }
            VmWindowInput::SerialText(text) => {
                let buffer = widgets.console.buffer();
                buffer.insert(&mut buffer.end_iter(), &text);
                let end = buffer.create_mark(None, &buffer.end_iter(), false);
                widgets.console.scroll_mark_onscreen(&end);
                buffer.delete_mark(&end);
            }
            VmWindowInput::SerialKey(text) => {
                if let Some(serial) = &self.serial
                    && let Ok(mut stream) = serial.lock()
                    && let Err(err) = stream.write_all(text.as_bytes())
                {
                    log::warn!("cannot write to the serial console: {err}");
                }
            }
            VmWindowInput::Act(action) => {
                let _ = sender.output(VmWindowOutput::Act(self.init.vm.id.clone(), action));
            }
            VmWindowInput::FpsStart => self.frames.start = self.frames.received,
            VmWindowInput::FpsReport(painted) => {
                let seconds = bench::fps_window().map_or(1.0, |d| d.as_secs_f64());
                println!(
                    "fps painted {:.1} received {:.1}",
                    painted as f64 / seconds,
                    (self.frames.received - self.frames.start) as f64 / seconds
                );
                relm4::main_application().quit();
            }
            VmWindowInput::Closed => {
                self.session = None;
                if let Some(serial) = self.serial.take()
                    && let Ok(stream) = serial.lock()
                {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
                let _ = sender.output(VmWindowOutput::Closed(self.init.vm.id.clone()));
            }
        }
        self.update_view(widgets, sender);
    }
}

impl VmWindow {
    fn frame(&mut self, frame: FrameEvent, screen: &ScreenView, sender: &ComponentSender<Self>) {
        match frame {
            FrameEvent::Resolution(width, height) => {
                self.status = None;
                screen.set_resolution(width, height);
            }
            FrameEvent::Pixels(rect, data) => {
                self.retries = 0;
                let (width, height) = screen.resolution();
                self.frames.received(
                    u64::from(rect.width) * u64::from(rect.height),
                    u64::from(width) * u64::from(height),
                );
                screen.put(rect, &data);
            }
            FrameEvent::Copy(rect, x, y) => screen.copy(rect, x, y),
            FrameEvent::Closed(Some(reason)) if self.retries < MAX_RETRIES => {
                // A helper still starting, or a hiccup while the guest switches modes:
                // connect again after a moment before saying anything.
                log::info!("display connection ended ({reason}); connecting again");
                self.session = None;
                self.retries += 1;
                let input = sender.input_sender().clone();
                glib::timeout_add_local_once(RETRY_DELAY, move || {
                    input.emit(VmWindowInput::Connect);
                });
            }
            FrameEvent::Closed(reason) => {
                self.session = None;
                self.status = Some(match reason {
                    Some(reason) => {
                        log::warn!("display connection ended: {reason}");
                        gettext_f(
                            // Translators: {reason} is a technical error message.
                            "The display is not available: {reason}",
                            &[("reason", &reason)],
                        )
                    }
                    None => gettext("The display connection ended"),
                });
            }
        }
    }

    fn connect(&mut self, sender: &ComponentSender<Self>) {
        let Some(socket) = self.init.vnc_socket.clone() else {
            return;
        };
        self.status = None;
        let input = sender.input_sender().clone();
        match vnc_session::start(socket, move |frame| {
            input.send(VmWindowInput::Frame(frame)).is_ok()
        }) {
            Ok(session) => self.session = Some(session),
            Err(err) => self.status = Some(err.to_string()),
        }
    }

    fn send(&self, event: InputEvent) {
        if let Some(session) = &self.session {
            session.send(event);
        }
    }

    fn pointer(&self) {
        let (x, y) = self.last_pointer;
        self.send(InputEvent::Pointer {
            x,
            y,
            buttons: self.buttons,
        });
    }
}

/// Keys, pointer motion, buttons and the wheel on the screen go to the guest.
/// How long the header bar stays after the window goes fullscreen.
const HEADER_HINT: std::time::Duration = std::time::Duration::from_secs(2);

/// How close to the top edge the pointer brings the fullscreen header bar back (pixels).
const REVEAL_EDGE: f64 = 8.0;

/// Puts the header bar above the guest's screen (windowed) or over it, hidden until the
/// pointer reaches the top edge (fullscreen), as a fullscreen guest should fill the screen.
fn place_header(widgets: &VmWindowWidgets, fullscreen: bool) {
    let revealer = &widgets.header_revealer;
    if fullscreen {
        widgets.layout.remove(revealer);
        revealer.set_valign(gtk::Align::Start);
        widgets.frame.add_overlay(revealer);
    } else {
        widgets.frame.remove_overlay(revealer);
        revealer.set_valign(gtk::Align::Fill);
        widgets.layout.prepend(revealer);
    }
    revealer.set_reveal_child(true);
}

/// Whether the fullscreen header bar is in use: the pointer `y` pixels from the top is on
/// it (with a margin), or its menu is open.
fn header_in_use(widgets: &VmWindowWidgets, y: f64) -> bool {
    let height = f64::from(widgets.header.height());
    y <= height + 16.0
        || widgets
            .menu_button
            .popover()
            .is_some_and(|p| p.is_visible())
}

fn install_screen_input(screen: &ScreenView, sender: &ComponentSender<VmWindow>) {
    let keys = gtk::EventControllerKey::new();
    let input = sender.clone();
    keys.connect_key_pressed(move |_, key, keycode, _| {
        input.input(VmWindowInput::Key(key.into_glib(), keycode, true));
        glib::Propagation::Stop
    });
    let input = sender.clone();
    keys.connect_key_released(move |_, key, keycode, _| {
        input.input(VmWindowInput::Key(key.into_glib(), keycode, false));
    });
    screen.add_controller(keys);

    let motion = gtk::EventControllerMotion::new();
    let input = sender.clone();
    motion.connect_motion(move |_, x, y| input.input(VmWindowInput::Motion(x, y)));
    screen.add_controller(motion);

    let click = gtk::GestureClick::new();
    click.set_button(0);
    let input = sender.clone();
    click.connect_pressed(move |gesture, _, x, y| {
        input.input(VmWindowInput::Motion(x, y));
        if let Some(bit) = rfb_button(gesture.current_button()) {
            input.input(VmWindowInput::Button(bit, true));
        }
    });
    let input = sender.clone();
    click.connect_released(move |gesture, _, _, _| {
        if let Some(bit) = rfb_button(gesture.current_button()) {
            input.input(VmWindowInput::Button(bit, false));
        }
    });
    screen.add_controller(click);

    let scroll = gtk::EventControllerScroll::new(gtk::EventControllerScrollFlags::VERTICAL);
    let input = sender.clone();
    scroll.connect_scroll(move |_, _, dy| {
        if dy != 0.0 {
            input.input(VmWindowInput::Wheel(dy < 0.0));
        }
        glib::Propagation::Stop
    });
    screen.add_controller(scroll);
}

/// Starts the frame-rate probe once the first full screen has arrived: counts the frames
/// painted during `window` and reports them.
fn start_fps_probe(window: Duration, screen: &ScreenView, sender: &ComponentSender<VmWindow>) {
    let screen = screen.clone();
    let input = sender.clone();
    // Give the connection and the first full frame two seconds, then measure.
    glib::timeout_add_local_once(Duration::from_secs(2), move || {
        let start = screen.fresh_frames();
        input.input(VmWindowInput::FpsStart);
        glib::timeout_add_local_once(window, move || {
            input.input(VmWindowInput::FpsReport(screen.fresh_frames() - start));
        });
    });
}

/// GDK button 1/2/3 (left, middle, right) as RFB mask bits 0/1/2.
fn rfb_button(button: u32) -> Option<u8> {
    match button {
        1 => Some(0),
        2 => Some(1),
        3 => Some(2),
        _ => None,
    }
}

/// Typed characters in the console go to the serial socket; Enter sends a newline.
fn install_console_input(console: &gtk::TextView, sender: &ComponentSender<VmWindow>) {
    let keys = gtk::EventControllerKey::new();
    let input = sender.clone();
    keys.connect_key_pressed(move |_, key, _, _| {
        let text = match key {
            gtk::gdk::Key::Return | gtk::gdk::Key::KP_Enter => "\n".to_owned(),
            gtk::gdk::Key::BackSpace => "\u{8}".to_owned(),
            _ => match key.to_unicode() {
                Some(c) if !c.is_control() => c.to_string(),
                _ => return glib::Propagation::Proceed,
            },
        };
        input.input(VmWindowInput::SerialKey(text));
        glib::Propagation::Stop
    });
    console.add_controller(keys);
}

/// Sends the screen's size in device pixels once it has been still for 300 ms.
fn install_resize_watch(screen: &ScreenView, sender: &ComponentSender<VmWindow>) {
    let generation = Rc::new(Cell::new(0u64));
    let input = sender.clone();
    screen.connect_resized(move |screen, width, height| {
        let current = generation.get().wrapping_add(1);
        generation.set(current);
        let generation = generation.clone();
        let input = input.clone();
        let scale = WidgetExt::scale_factor(screen).max(1);
        glib::timeout_add_local_once(Duration::from_millis(300), move || {
            if generation.get() != current {
                return;
            }
            let width = u16::try_from(width * scale).unwrap_or(u16::MAX);
            let height = u16::try_from(height * scale).unwrap_or(u16::MAX);
            input.input(VmWindowInput::AreaResized(width, height));
        });
    });
}

/// Connects to the serial console and forwards its output on a reader thread.
fn connect_serial(
    socket: PathBuf,
    sender: &ComponentSender<VmWindow>,
) -> Option<Arc<Mutex<UnixStream>>> {
    let stream = match UnixStream::connect(&socket) {
        Ok(stream) => stream,
        Err(err) => {
            sender.input(VmWindowInput::SerialText(gettext_f(
                // Translators: {reason} is a technical error message.
                "The serial console is not available: {reason}\n",
                &[("reason", &err.to_string())],
            )));
            return None;
        }
    };
    let mut reader = stream.try_clone().ok()?;
    let input = sender.input_sender().clone();
    let spawned = std::thread::Builder::new()
        .name("serial".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if input.send(VmWindowInput::SerialText(text)).is_err() {
                    break;
                }
            }
        });
    if let Err(err) = spawned {
        log::warn!("cannot start the serial console reader: {err}");
    }
    Some(Arc::new(Mutex::new(stream)))
}
