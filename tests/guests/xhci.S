/* xHCI guest: a polling driver for the xHCI controller 1b36:000d (QEMU's qemu-xhci id,
 * Hospes' too) and the USB tablet behind it, printing every step on COM1.
 *
 * Flow: find the function on bus 0 (BAR0 as the firmware or the helper assigned it, below
 * 4 GiB), turn on memory decoding and bus mastering, read the capability registers,
 * halt and reset the controller, set MaxSlotsEn, DCBAAP, the command ring (a Link TRB at
 * its end back to its start) and interrupter 0's event ring (one ERST segment of EV_TRBS
 * TRBs), then run it. For each port with a device (CCS), in port order: reset it (PR,
 * wait PRC), Enable Slot, Address Device (slot context: route 0, the port's speed, its
 * root hub port; EP0: control, max packet 8/64/512 by speed), read the device and
 * configuration descriptors on EP0; a boot keyboard (HID subclass 1 protocol 1) is
 * skipped ("skip keyboard") and the next port tried. For the first other HID device:
 * SET_CONFIGURATION, its HID report descriptor (length from the HID descriptor),
 * SET_IDLE(0), Configure Endpoint for its interrupt IN endpoint, then "READY" and one
 * Normal TRB (IOC, ISP) after another, each report printed as
 * "report cc XX len NN: b0 b1 ..." (hex), until a report with button 1 down (bit 0 of
 * its first byte) has been followed by one with it up, or MAX_REPORTS reports; then
 * "DONE" and ACPI power-off.
 *
 * Nothing uses interrupts: the event ring is polled (IMAN.IE and USBCMD.INTE stay 0);
 * port status change events are consumed and skipped. Each command or transfer prints
 * "<step> cc XX" (xHCI completion code, 01 = Success); any other code, a timeout or a
 * missing piece prints "FAILED: <what>" and halts.
 *
 * Under QEMU (SeaBIOS places BAR0 and boots the PVH note through its option ROM):
 *   qemu-system-x86_64 -accel kvm -M q35 -m 64M -nodefaults -display none \
 *     -bios /usr/share/seabios/bios-256k.bin -serial stdio -kernel xhci.elf \
 *     -device qemu-xhci -device usb-tablet -qmp unix:qmp.sock,server=on,wait=off
 * then, after READY, QMP input-send-event with abs x/y and a button. */
#include "pvh_note.S"

#define MAX_REPORTS	16
#define RING_TRBS	64		/* command and transfer rings: 1 KiB, Link TRB last */
#define EV_TRBS		16		/* the event ring segment */
#define SPINS		0x2000000	/* polls before a step times out */

/* Capability registers (xHCI 1.2, 5.3) */
#define CAPLENGTH	0x00
#define HCSPARAMS1	0x04
#define HCSPARAMS2	0x08
#define HCCPARAMS1	0x10
#define DBOFF		0x14
#define RTSOFF		0x18
/* Operational registers (5.4), from the operational base */
#define USBCMD		0x00
#define USBSTS		0x04
#define CRCR		0x18
#define DCBAAP		0x30
#define CONFIG		0x38
#define PORTSC		0x400		/* + 0x10 * (port - 1) */
#define CMD_RS		(1 << 0)
#define CMD_HCRST	(1 << 1)
#define STS_HCH		(1 << 0)
#define STS_CNR		(1 << 11)
/* PORTSC bits (5.4.8) */
#define PS_CCS		(1 << 0)
#define PS_PED		(1 << 1)
#define PS_PR		(1 << 4)
#define PS_CSC		(1 << 17)
#define PS_PRC		(1 << 21)
#define PS_KEEP		0x0e00c200	/* PP, PIC, WCE/WDE/WOE: written back unchanged */
/* Interrupter 0 (5.5.2), from the runtime base */
#define IR0		0x20
#define ERSTSZ		0x08
#define ERSTBA		0x10
#define ERDP		0x18
#define ERDP_EHB	(1 << 3)
/* TRB types and control bits (6.4) */
#define TRB_NORMAL	(1 << 10)
#define TRB_SETUP	(2 << 10)
#define TRB_DATA	(3 << 10)
#define TRB_STATUS	(4 << 10)
#define TRB_LINK	(6 << 10)
#define TRB_ENABLE_SLOT	(9 << 10)
#define TRB_ADDRESS	(11 << 10)
#define TRB_CONFIGURE	(12 << 10)
#define EV_TRANSFER	32
#define EV_COMMAND	33
#define TRB_TC		(1 << 1)	/* Link: toggle cycle */
#define TRB_ISP		(1 << 2)
#define TRB_IOC		(1 << 5)
#define TRB_IDT		(1 << 6)
#define TRB_DIR_IN	(1 << 16)
#define TRT_OUT		(2 << 16)
#define TRT_IN		(3 << 16)
#define FOREVER		0x80000000	/* wait_event: no timeout */
#define CC_SUCCESS	1
#define CC_SHORT	13

	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	cld

	/* The controller on bus 0. */
	xor %ebx, %ebx
1:	xor %ecx, %ecx
	call pci_read
	cmp $0x000d1b36, %eax
	je 2f
	inc %ebx
	cmp $32, %ebx
	jb 1b
	mov $s_noxhci, %esi
	jmp fail
2:	mov $0x14, %ecx
	call pci_read
	mov $s_bar64, %esi
	test %eax, %eax
	jnz fail
	mov $0x10, %ecx
	call pci_read
	and $0xfffffff0, %eax
	mov $s_nobar, %esi
	jz fail
	mov %eax, bar
	mov $4, %ecx
	call pci_read
	or $6, %ax			/* memory space, bus master */
	out %ax, %dx
	mov $s_found, %esi
	call puts
	mov %ebx, %eax
	call puthex8
	mov $s_barat, %esi
	call puts
	mov bar, %eax
	call puthex32
	call newline

	/* Capabilities. */
	mov bar, %ebp
	mov $s_caplen, %esi
	call puts
	mov CAPLENGTH(%ebp), %eax	/* CAPLENGTH, HCIVERSION: one dword read */
	movzbl %al, %eax
	call puthex8
	mov $s_hcs1, %esi
	call puts
	mov HCSPARAMS1(%ebp), %eax
	call puthex32
	mov $s_hcc1, %esi
	call puts
	mov HCCPARAMS1(%ebp), %eax
	call puthex32
	call newline
	mov CAPLENGTH(%ebp), %eax	/* CAPLENGTH, HCIVERSION: one dword read */
	movzbl %al, %eax
	add %ebp, %eax
	mov %eax, op
	mov DBOFF(%ebp), %eax
	and $~3, %eax
	add %ebp, %eax
	mov %eax, db
	mov RTSOFF(%ebp), %eax
	and $~0x1f, %eax
	add %ebp, %eax
	mov %eax, rt
	mov HCSPARAMS1(%ebp), %eax
	movzbl %al, %ecx
	mov %ecx, maxslots
	shr $24, %eax
	mov %eax, maxports
	mov HCCPARAMS1(%ebp), %eax
	test $4, %al			/* CSZ: 64-byte contexts */
	jz 3f
	movl $64, ctxsz
3:	/* Supported Protocol capabilities (7.2): "protocol MMmm ports first+count". */
	mov HCCPARAMS1(%ebp), %esi
	shr $16, %esi			/* xECP, in dwords */
	mov $16, %ecx			/* at most this many capabilities */
31:	test %esi, %esi
	jz 3f
	lea (%ebp,%esi,4), %edi
	mov (%edi), %eax
	cmp $2, %al
	jne 32f
	push %esi
	mov $s_proto, %esi
	call puts
	shr $16, %eax
	call puthex16
	mov $s_ports, %esi
	call puts
	mov 8(%edi), %eax		/* dword reads only: count 15:8, offset 7:0 */
	movzbl %al, %eax
	call putdec
	mov $'+', %al
	call putc
	mov 8(%edi), %eax
	movzbl %ah, %eax
	call putdec
	call newline
	pop %esi
	mov (%edi), %eax
32:	movzbl %ah, %eax
	test %eax, %eax
	jz 3f
	add %eax, %esi
	loop 31b
3:	mov HCSPARAMS2(%ebp), %eax	/* Max Scratchpad Buffers Hi (25:21) and Lo (31:27) */
	test $0xfbe00000, %eax
	mov $s_scratch, %esi
	jnz fail

	/* Halt, reset, wait for Controller Not Ready to clear. */
	mov op, %ebp
	movl $0, USBCMD(%ebp)
	mov $SPINS, %ecx
4:	testl $STS_HCH, USBSTS(%ebp)
	jnz 5f
	pause
	loop 4b
	mov $s_nohalt, %esi
	jmp fail
5:	movl $CMD_HCRST, USBCMD(%ebp)
	mov $SPINS, %ecx
6:	testl $CMD_HCRST, USBCMD(%ebp)
	jnz 7f
	testl $STS_CNR, USBSTS(%ebp)
	jz 8f
7:	pause
	loop 6b
	mov $s_noreset, %esi
	jmp fail
8:	mov $s_reset, %esi
	call puts

	/* Slots, DCBAA, command ring, event ring, run. */
	mov maxslots, %eax
	mov %eax, CONFIG(%ebp)
	movl $dcbaa, DCBAAP(%ebp)
	movl $0, DCBAAP+4(%ebp)
	mov $cmdq, %esi
	call init_ring
	movl $(cmdring + 1), CRCR(%ebp)	/* RCS = 1 */
	movl $0, CRCR+4(%ebp)
	movl $evring, erst
	movl $0, erst+4
	movl $EV_TRBS, erst+8
	mov rt, %edx
	movl $1, IR0+ERSTSZ(%edx)
	movl $evring, IR0+ERDP(%edx)
	movl $0, IR0+ERDP+4(%edx)
	movl $erst, IR0+ERSTBA(%edx)
	movl $0, IR0+ERSTBA+4(%edx)
	movl $CMD_RS, USBCMD(%ebp)
	mov $s_running, %esi
	call puts

	/* Each port with a device until a non-keyboard HID device is set up. */
	movl $0, port
next_port:
	incl port
	mov port, %eax
	cmp maxports, %eax
	jbe 1f
	mov $s_nodevice, %esi
	jmp fail
1:	call portsc
	testl $PS_CCS, (%edi)
	jz next_port
	call enumerate
	jc next_port

	/* SET_CONFIGURATION, report descriptor, SET_IDLE(0). */
	mov $s_setconf, %esi
	call puts
	movzbl confval, %eax
	shl $16, %eax
	or $0x0900, %eax
	xor %edx, %edx
	call control
	call check_cc
	mov $s_getrep, %esi
	call puts
	movzwl replen, %edx
	cmp $512, %edx
	jbe 2f
	mov $512, %edx
2:	shl $16, %edx
	or iface, %edx
	mov $0x22000681, %eax
	call control
	call check_cc
	mov $s_replen, %esi
	call puts
	movzwl replen, %eax
	call puthex16
	call newline
	mov $s_setidle, %esi
	call puts
	mov $0x00000a21, %eax
	mov iface, %edx
	call control
	call check_cc

	/* Configure Endpoint: slot context with entries up to the endpoint's DCI, and the
	 * interrupt IN endpoint context. */
	call clear_input
	mov $inctx, %edi
	mov dci, %ecx
	mov $1, %eax
	shl %cl, %eax
	or $1, %eax
	mov %eax, 4(%edi)		/* add: A0 | A(dci) */
	mov dci, %eax
	call slot_context
	mov dci, %eax
	inc %eax
	imul ctxsz, %eax
	add %eax, %edi			/* the endpoint's context */
	movzbl interval, %eax
	shl $16, %eax
	mov %eax, (%edi)
	movzwl epmps, %eax
	shl $16, %eax
	or $((7 << 3) | (3 << 1)), %eax	/* Interrupt IN, CErr 3 */
	mov %eax, 4(%edi)
	mov $intq, %esi
	call init_ring
	movl $(intring + 1), 8(%edi)	/* TR dequeue, DCS */
	movzwl epmps, %eax
	mov %eax, %ecx
	shl $16, %ecx
	or %ecx, %eax			/* Max ESIT payload, average TRB length */
	mov %eax, 16(%edi)
	mov $s_configure, %esi
	call puts
	mov $inctx, %eax
	movzbl slot, %edx
	shl $24, %edx
	or $TRB_CONFIGURE, %edx
	call command
	call check_cc
	mov $s_ready, %esi
	call puts

	/* Reports. */
	movl $MAX_REPORTS, left
report:
	mov $intq, %esi
	mov $reportbuf, %eax
	xor %ebx, %ebx
	movzwl epmps, %ecx
	mov $(TRB_NORMAL | TRB_IOC | TRB_ISP), %edx
	call enqueue
	mov dci, %eax
	call doorbell
	mov $(EV_TRANSFER | FOREVER), %ecx
	call wait_event
	mov $s_report, %esi
	call puts
	call puthex8
	cmp $CC_SUCCESS, %eax
	je 1f
	cmp $CC_SHORT, %eax
	mov $s_badcc, %esi
	jne fail
1:	movzwl epmps, %ecx
	mov ev+8, %eax
	and $0xffffff, %eax		/* bytes not transferred */
	cmp %ecx, %eax
	jbe 7f
	mov %ecx, %eax
7:	sub %eax, %ecx
	mov $s_len, %esi
	call puts
	mov %ecx, %eax
	call puthex8
	mov $':', %al
	call putc
	mov $reportbuf, %esi
	test %ecx, %ecx
	jz 3f
2:	mov $' ', %al
	call putc
	lodsb
	call puthex8
	loop 2b
3:	call newline
	testb $1, reportbuf		/* button 1 */
	jz 4f
	movb $1, pressed
	jmp 5f
4:	cmpb $0, pressed
	jne 6f				/* released after a press */
5:	decl left
	jnz report
6:	mov $s_done, %esi
	call puts
	jmp acpi_poweroff

/* enumerate: resets port `port`, gives its device a slot and an address and reads its
 * descriptors; returns with CF set for a boot keyboard (to be skipped), CF clear for
 * another HID device with an interrupt IN endpoint (iface, confval, replen, epaddr, dci,
 * epmps, interval set). */
enumerate:
	call portsc
	mov (%edi), %eax
	and $PS_KEEP, %eax
	or $PS_PR, %eax
	mov %eax, (%edi)
	mov $SPINS, %ecx
1:	testl $PS_PRC, (%edi)
	jnz 2f
	pause
	loop 1b
	mov $s_noprc, %esi
	jmp fail
2:	mov (%edi), %ebx
	mov %ebx, %eax
	and $PS_KEEP, %eax
	or $(PS_PRC | PS_CSC), %eax
	mov %eax, (%edi)
	mov $s_noped, %esi
	test $PS_PED, %ebx
	jz fail
	shr $10, %ebx
	and $0xf, %ebx
	mov %ebx, speed
	mov $s_port, %esi
	call puts
	mov port, %eax
	call putdec
	mov $s_speed, %esi
	call puts
	mov %ebx, %eax
	call putdec
	call newline
	movl $8, mps0			/* low and full speed */
	cmp $3, %ebx
	jne 3f
	movl $64, mps0			/* high speed */
3:	cmp $4, %ebx
	jb 4f
	movl $512, mps0			/* SuperSpeed */

4:	/* Enable Slot. */
	mov $s_enslot, %esi
	call puts
	xor %eax, %eax
	mov $TRB_ENABLE_SLOT, %edx
	call command
	call check_cc
	movzbl ev+15, %eax
	mov %eax, slot
	mov $s_slot, %esi
	call puts
	call puthex8
	call newline
	mov $s_badslot, %esi
	test %eax, %eax
	jz fail
	cmp $4, %eax
	ja fail
	/* Its output context: one of four 2 KiB areas. */
	dec %eax
	shl $11, %eax
	add $devctx, %eax
	mov slot, %ecx
	mov %eax, dcbaa(,%ecx,8)
	movl $0, dcbaa+4(,%ecx,8)

	/* Address Device: slot context and EP0 on a fresh ring. */
	call clear_input
	mov $inctx, %edi
	movl $3, 4(%edi)		/* add: A0 | A1 */
	mov $1, %eax
	call slot_context
	mov ctxsz, %eax
	lea (%edi,%eax,2), %edi		/* EP0 */
	mov mps0, %eax
	shl $16, %eax
	or $((4 << 3) | (3 << 1)), %eax	/* Control, CErr 3 */
	mov %eax, 4(%edi)
	mov $ep0q, %esi
	call init_ring
	movl $(ep0ring + 1), 8(%edi)	/* TR dequeue, DCS */
	movl $8, 16(%edi)		/* average TRB length */
	mov $s_address, %esi
	call puts
	mov $inctx, %eax
	mov slot, %edx
	shl $24, %edx
	or $TRB_ADDRESS, %edx
	call command
	call check_cc

	/* Device descriptor. */
	mov $s_getdev, %esi
	call puts
	mov $0x01000680, %eax
	mov $(18 << 16), %edx
	call control
	call check_cc
	mov $s_vendor, %esi
	call puts
	movzwl buf+8, %eax
	call puthex16
	mov $s_product, %esi
	call puts
	movzwl buf+10, %eax
	call puthex16
	call newline
	mov $s_devclass, %esi
	call puts
	movzbl buf+4, %eax
	call puthex8
	call newline
	mov $s_mps0, %esi
	call puts
	movzbl buf+7, %eax
	call puthex8
	call newline

	/* Configuration descriptor: its first 9 bytes for wTotalLength, then all of it. */
	mov $s_getconf, %esi
	call puts
	mov $0x02000680, %eax
	mov $(9 << 16), %edx
	call control
	call check_cc
	movzbl buf+5, %eax
	mov %eax, confval
	movzwl buf+2, %edx
	mov %edx, %eax
	cmp $512, %edx
	jbe 5f
	mov $512, %edx
5:	mov %edx, conflen
	mov $s_conflen, %esi
	call puts
	call puthex16
	call newline
	mov $s_getconf, %esi
	call puts
	mov conflen, %edx
	shl $16, %edx
	mov $0x02000680, %eax
	call control
	call check_cc

	/* Walk it: the first interface, its HID descriptor and interrupt IN endpoint. */
	movl $0, epaddr
	movl $0, replen
	mov $buf, %esi
	mov conflen, %ecx
	add %esi, %ecx			/* end */
6:	lea 2(%esi), %eax
	cmp %ecx, %eax
	ja 9f
	movzbl (%esi), %edx		/* bLength */
	cmp $2, %edx
	jb 9f
	movzbl 1(%esi), %eax		/* bDescriptorType */
	cmp $4, %eax
	jne 7f
	cmpb $0, seen_iface
	jne 9f				/* the next interface: done */
	movb $1, seen_iface
	movzbl 2(%esi), %eax
	mov %eax, iface
	mov 5(%esi), %eax		/* class, subclass, protocol */
	mov %eax, ifclass
	jmp 8f
7:	cmp $0x21, %eax			/* HID */
	jne 71f
	movzwl 7(%esi), %eax		/* wDescriptorLength of the report descriptor */
	mov %eax, replen
	jmp 8f
71:	cmp $5, %eax			/* endpoint */
	jne 8f
	testb $0x80, 2(%esi)
	jz 8f
	cmpl $0, epaddr
	jne 8f
	movzbl 2(%esi), %eax
	mov %eax, epaddr
	movzwl 4(%esi), %eax
	and $0x7ff, %eax
	mov %eax, epmps
	movzbl 6(%esi), %eax
	mov %eax, binterval
8:	add %edx, %esi
	jmp 6b
9:	movb $0, seen_iface
	mov $s_ifclass, %esi
	call puts
	movzbl ifclass, %eax
	call puthex8
	mov $s_subclass, %esi
	call puts
	movzbl ifclass+1, %eax
	call puthex8
	mov $s_protocol, %esi
	call puts
	movzbl ifclass+2, %eax
	call puthex8
	call newline
	cmpw $0x0101, ifclass+1		/* boot keyboard */
	jne 10f
	mov $s_skipkbd, %esi
	call puts
	stc
	ret
10:	mov $s_nohid, %esi
	cmpb $3, ifclass
	jne fail
	mov $s_noep, %esi
	cmpl $0, epaddr
	je fail
	mov $s_noreport, %esi
	cmpl $0, replen
	je fail
	mov $s_endpoint, %esi
	call puts
	mov epaddr, %eax
	call puthex8
	call newline
	mov $s_epmps, %esi
	call puts
	mov epmps, %eax
	call puthex16
	mov $s_interval, %esi
	call puts
	mov binterval, %eax
	call puthex8
	call newline
	mov $s_bigmps, %esi
	cmpl $64, epmps
	ja fail
	cmpl $0, epmps
	je fail
	/* DCI of an IN endpoint: 2 * number + 1. */
	mov epaddr, %eax
	and $0xf, %eax
	lea 1(,%eax,2), %eax
	mov %eax, dci
	/* xHCI interval (6.2.3.6): high speed and up take bInterval - 1 as an exponent of
	 * 125 us; full and low speed bInterval in ms, as 2^(3 + log2 ms). */
	mov binterval, %eax
	test %eax, %eax
	jnz 11f
	inc %eax
11:	cmpl $3, speed
	jb 12f
	dec %eax
	jmp 13f
12:	bsr %eax, %eax
	add $3, %eax
13:	mov %eax, interval
	clc
	ret

/* slot_context: fills the input context's slot context: route 0, `speed`, context
 * entries %eax, root hub port `port`. Preserves %edi. */
slot_context:
	push %edi
	add ctxsz, %edi
	shl $27, %eax
	mov speed, %ecx
	shl $20, %ecx
	or %ecx, %eax
	mov %eax, (%edi)
	mov port, %eax
	shl $16, %eax
	mov %eax, 4(%edi)
	pop %edi
	ret

/* clear_input: zeroes the input context. */
clear_input:
	push %edi
	push %ecx
	push %eax
	mov $inctx, %edi
	mov $(33 * 64 / 4), %ecx
	xor %eax, %eax
	rep stosl
	pop %eax
	pop %ecx
	pop %edi
	ret

/* init_ring: zeroes the ring whose state is at %esi (base, index, cycle), sets index 0
 * and cycle 1, and puts a Link TRB (toggle cycle, cycle 1) back to its start last. */
init_ring:
	push %edi
	push %ecx
	push %eax
	mov (%esi), %edi
	mov $(RING_TRBS * 4), %ecx
	xor %eax, %eax
	rep stosl
	movl $0, 4(%esi)
	movl $1, 8(%esi)
	mov (%esi), %edi
	mov %edi, (RING_TRBS - 1) * 16(%edi)
	movl $(TRB_LINK | TRB_TC | 1), (RING_TRBS - 1) * 16 + 12(%edi)
	pop %eax
	pop %ecx
	pop %edi
	ret

/* enqueue: writes a TRB (parameter %eax:%ebx, status %ecx, control %edx without the
 * cycle bit) on the ring whose state is at %esi, the control dword (with the producer
 * cycle) last; at the Link TRB it wraps and toggles the cycle. */
enqueue:
	push %edi
	push %edx
	mov 4(%esi), %edi
	shl $4, %edi
	add (%esi), %edi
	mov %eax, (%edi)
	mov %ebx, 4(%edi)
	mov %ecx, 8(%edi)
	or 8(%esi), %edx
	mov %edx, 12(%edi)
	incl 4(%esi)
	cmpl $(RING_TRBS - 1), 4(%esi)
	jb 1f
	mov 8(%esi), %edx		/* hand the Link TRB over with this cycle */
	or $(TRB_LINK | TRB_TC), %edx
	mov %edx, 28(%edi)
	movl $0, 4(%esi)
	xorl $1, 8(%esi)
1:	pop %edx
	pop %edi
	ret

/* doorbell: rings `slot`'s doorbell for endpoint (DCI) %eax. */
doorbell:
	push %edx
	push %ecx
	mov slot, %ecx
	mov db, %edx
	mov %eax, (%edx,%ecx,4)
	pop %ecx
	pop %edx
	ret

/* command: queues a command TRB (parameter %eax, control %edx), rings doorbell 0 and
 * waits for its Command Completion Event; %eax = completion code. */
command:
	push %esi
	push %ebx
	push %ecx
	push %edx
	xor %ebx, %ebx
	xor %ecx, %ecx
	mov $cmdq, %esi
	call enqueue
	mov db, %edx
	movl $0, (%edx)
	mov $EV_COMMAND, %ecx
	call wait_event
	pop %edx
	pop %ecx
	pop %ebx
	pop %esi
	ret

/* control: a control transfer on `slot`'s EP0: setup packet %eax (bmRequestType,
 * bRequest, wValue) and %edx (wIndex, wLength), data stage in or out of `buf`; only the
 * Status TRB asks for an event. %eax = its completion code. */
control:
	push %esi
	push %ebx
	push %ecx
	push %edx
	push %edi
	push %ebp
	mov $ep0q, %esi
	mov %eax, %ebp			/* the request */
	mov %edx, %ebx
	mov %edx, %edi
	shr $16, %edi			/* wLength */
	mov $8, %ecx
	mov $(TRB_SETUP | TRB_IDT), %edx
	test %edi, %edi
	jz 1f
	or $TRT_OUT, %edx
	test $0x80, %al
	jz 1f
	or $TRT_IN, %edx
1:	call enqueue
	test %edi, %edi
	jz 2f
	mov $buf, %eax
	xor %ebx, %ebx
	mov %edi, %ecx
	mov $TRB_DATA, %edx
	test $0x80, %ebp
	jz 3f
	or $TRB_DIR_IN, %edx
3:	call enqueue
2:	mov $(TRB_STATUS | TRB_IOC | TRB_DIR_IN), %edx
	test %edi, %edi
	jz 4f
	test $0x80, %ebp
	jz 4f
	and $~TRB_DIR_IN, %edx		/* after an IN data stage the status stage is OUT */
4:	xor %eax, %eax
	xor %ebx, %ebx
	xor %ecx, %ecx
	call enqueue
	mov $1, %eax
	call doorbell
	mov $EV_TRANSFER, %ecx
	call wait_event
	pop %ebp
	pop %edi
	pop %edx
	pop %ecx
	pop %ebx
	pop %esi
	ret

/* wait_event: the next event of type %ecx (bits 5:0; bit 31: wait forever), skipping
 * others (port status changes), copied to `ev`; ERDP follows each one. %eax = the
 * completion code. */
wait_event:
	push %esi
	push %edx
	push %ebx
	mov $SPINS, %ebx
1:	mov evidx, %esi
	shl $4, %esi
	add $evring, %esi
	mov 12(%esi), %edx
	and $1, %edx
	cmp evcycle, %edx
	je 2f
	pause
	test $FOREVER, %ecx
	jnz 1b
	dec %ebx
	jnz 1b
	mov $s_timeout, %esi
	jmp fail
2:	mov (%esi), %eax
	mov %eax, ev
	mov 4(%esi), %eax
	mov %eax, ev+4
	mov 8(%esi), %eax
	mov %eax, ev+8
	mov 12(%esi), %eax
	mov %eax, ev+12
	incl evidx
	cmpl $EV_TRBS, evidx
	jb 3f
	movl $0, evidx
	xorl $1, evcycle
3:	mov evidx, %eax
	shl $4, %eax
	add $evring, %eax
	or $ERDP_EHB, %eax
	mov rt, %edx
	mov %eax, IR0+ERDP(%edx)
	mov ev+12, %eax
	shr $10, %eax
	and $0x3f, %eax
	mov %ecx, %edx
	and $0x3f, %edx
	cmp %edx, %eax
	jne 1b
	movzbl ev+11, %eax
	pop %ebx
	pop %edx
	pop %esi
	ret

/* check_cc: prints " cc XX" for the completion code %eax and a newline; stops unless it
 * is Success. */
check_cc:
	push %esi
	mov $s_cc, %esi
	call puts
	call puthex8
	call newline
	pop %esi
	cmp $CC_SUCCESS, %eax
	jne 1f
	ret
1:	mov $s_badcc, %esi
	jmp fail

/* portsc: %edi = the PORTSC register of `port`. */
portsc:
	mov port, %edi
	dec %edi
	shl $4, %edi
	add op, %edi
	add $PORTSC, %edi
	ret

/* pci_read: configuration dword %ecx of bus 0 device %ebx into %eax; %dx left at 0xcfc. */
pci_read:
	mov %ebx, %eax
	shl $11, %eax
	or %ecx, %eax
	or $0x80000000, %eax
	mov $0xcf8, %dx
	out %eax, %dx
	mov $0xcfc, %dx
	in %dx, %eax
	ret

newline:
	push %eax
	mov $'\n', %al
	call putc
	pop %eax
	ret

/* fail: "FAILED: " + %esi, then halt. */
fail:
	push %esi
	mov $s_failed, %esi
	call puts
	pop %esi
	call puts
	call newline
1:	cli
	hlt
	jmp 1b

#include "hex.S"
#include "lib.S"

	.section .rodata
s_found:	.asciz "xhci 00:"
s_barat:	.asciz ".0 bar "
s_caplen:	.asciz "caplength "
s_hcs1:		.asciz " hcsparams1 "
s_hcc1:		.asciz " hccparams1 "
s_proto:	.asciz "supported protocol "
s_ports:	.asciz " ports "
s_reset:	.asciz "reset\n"
s_running:	.asciz "running\n"
s_port:		.asciz "port "
s_speed:	.asciz " speed "
s_enslot:	.asciz "enable slot"
s_slot:		.asciz "slot "
s_address:	.asciz "address device"
s_getdev:	.asciz "device descriptor"
s_vendor:	.asciz "vendor "
s_product:	.asciz " product "
s_devclass:	.asciz "device class "
s_mps0:		.asciz "max packet 0 "
s_getconf:	.asciz "configuration descriptor"
s_conflen:	.asciz "configuration length "
s_ifclass:	.asciz "interface class "
s_subclass:	.asciz " subclass "
s_protocol:	.asciz " protocol "
s_skipkbd:	.asciz "skip keyboard\n"
s_endpoint:	.asciz "endpoint "
s_epmps:	.asciz "endpoint max packet "
s_interval:	.asciz " interval "
s_setconf:	.asciz "set configuration"
s_getrep:	.asciz "report descriptor"
s_replen:	.asciz "report descriptor length "
s_setidle:	.asciz "set idle"
s_configure:	.asciz "configure endpoint"
s_ready:	.asciz "READY\n"
s_report:	.asciz "report cc "
s_len:		.asciz " len "
s_done:		.asciz "DONE\n"
s_cc:		.asciz " cc "
s_failed:	.asciz "FAILED: "
s_noxhci:	.asciz "no xhci 1b36:000d on bus 0"
s_bar64:	.asciz "bar0 above 4 GiB"
s_nobar:	.asciz "bar0 not assigned"
s_scratch:	.asciz "scratchpad buffers wanted"
s_nohalt:	.asciz "controller does not halt"
s_noreset:	.asciz "reset does not finish"
s_nodevice:	.asciz "no usable device on any port"
s_noprc:	.asciz "port reset does not finish"
s_noped:	.asciz "port not enabled after reset"
s_badslot:	.asciz "slot id out of range"
s_nohid:	.asciz "not a HID interface"
s_noep:		.asciz "no interrupt IN endpoint"
s_noreport:	.asciz "no HID report descriptor"
s_bigmps:	.asciz "endpoint max packet not in 1..64"
s_badcc:	.asciz "completion code"
s_timeout:	.asciz "timeout"

	.data
	.align 4
ctxsz:		.long 32
evcycle:	.long 1
evidx:		.long 0
/* ring states: base, index, cycle */
cmdq:		.long cmdring, 0, 1
ep0q:		.long ep0ring, 0, 1
intq:		.long intring, 0, 1
bar:		.long 0
op:		.long 0
rt:		.long 0
db:		.long 0
maxslots:	.long 0
maxports:	.long 0
port:		.long 0
speed:		.long 0
mps0:		.long 0
slot:		.long 0
confval:	.long 0
conflen:	.long 0
iface:		.long 0
ifclass:	.long 0
replen:		.long 0
epaddr:		.long 0
epmps:		.long 0
binterval:	.long 0
interval:	.long 0
dci:		.long 0
left:		.long 0
ev:		.long 0, 0, 0, 0
seen_iface:	.byte 0
pressed:	.byte 0

	.bss
	.align 4096
dcbaa:		.space 2048		/* 256 slots */
evring:		.space EV_TRBS * 16
erst:		.space 64
	.align 1024
cmdring:	.space RING_TRBS * 16
ep0ring:	.space RING_TRBS * 16
intring:	.space RING_TRBS * 16
	.align 4096
inctx:		.space 33 * 64
	.align 64
buf:		.space 512
reportbuf:	.space 64
	.align 4096
devctx:		.space 4 * 2048		/* slots 1..4 */
	.align 16
	.space 4096
stack_top:
