/* Intel HD Audio guest: a polling driver for the ICH9 HD Audio controller 8086:293e and
 * the codec at address 0, printing every step on COM1.
 *
 * Flow: find the function on bus 0 (BAR0, 64-bit, as the helper or firmware placed it
 * below 4 GiB), turn on memory decoding and bus mastering, reset the controller (CRST
 * 0 then 1) and wait for codec 0 in STATESTS ("hda gcap G statests S"). Set up a CORB
 * and a RIRB of 256 entries and send verbs through them, polling RIRBWP for each answer:
 * the codec's vendor id ("codec vendor V"), its function group's widgets, and for each
 * widget "widget N caps C pincaps P amp A conn L config D". The first output converter
 * and first input converter are used: the output converter gets stream tag 1, the
 * input converter tag 2, format and amplifiers at 0 dB unmuted; pins get their output
 * or input enable.
 *
 * By default it plays: output stream descriptor 4 (the first output stream) runs a
 * cyclic buffer of 4 BDL entries of 10 ms each (mono S16 at 48 kHz, IOC on each)
 * holding a 1 kHz square wave (24 samples at +8000, 24 at -8000; 40 ms is 40 whole
 * periods), and counts buffer completions (SDnSTS.BCIS, polled and cleared) until
 * PERIODS of them; it checks the DMA position buffer tracks LPIB, stops the stream and
 * prints "played N periods". With -DMARK=M the buffer holds silence until M completions
 * have passed; then the whole buffer becomes the square wave and "tone" is printed (the
 * benchmark's latency mark). With -DCAPTURE it records through input stream 0 (mono S16
 * at 8 kHz, 10 ms entries; the entries behind LPIB are the new ones), skips silent
 * periods and over the next PERIODS periods
 * counts zero crossings with hysteresis, the periods with 19..21 of them and the peak:
 * "captured N periods crossings C clean K peak P". Then ACPI power-off.
 *
 * Interrupts are checked once: with MSI on (capability 05: address 0xfee00000, vector
 * 0x25, LAPIC software-enabled, PICs masked) and INTCTL's GIE and CIE set, the answer to
 * the first verb must raise vector 0x25 ("msi: rirb interrupt on vector 0x25"); the
 * handler does not return (`iret` is one of the instructions this project's nested KVM
 * cannot emulate) but goes on with the flow, with INTCTL cleared again. After that,
 * status bits are polled. Any timeout or missing piece prints "FAILED: <what>" and
 * powers off.
 *
 * Under QEMU (SeaBIOS places BAR0 and boots the PVH note through its option ROM):
 *   qemu-system-x86_64 -accel kvm -M q35 -m 64M -nodefaults -display none \
 *     -bios /usr/share/seabios/bios-256k.bin -serial stdio -kernel hda.elf \
 *     -device ich9-intel-hda -device hda-duplex -audiodev none,id=a */
#include "pvh_note.S"

#ifndef PERIODS
#define PERIODS		150
#endif
#ifndef SPINS
#define SPINS		0x1000000	/* polls before a step times out */
#endif

#define CORB		0x400000
#define RIRB		0x401000
#define BDL		0x402000
#define POSBUF		0x403000
#define BUF		0x410000
#ifdef CAPTURE
#define SD		0x80		/* input stream 0 */
#define SD_INDEX	0
#define PERIOD		160		/* 80 frames of mono S16: 10 ms at 8 kHz */
#define FMT		0x0510		/* 48 kHz / 6, 16 bit, mono */
#define TAG		2
#else
#define SD		0x100		/* output stream 0 = descriptor 4 */
#define SD_INDEX	4
#define PERIOD		960		/* 480 frames of mono S16: 10 ms at 48 kHz */
#define FMT		0x0010		/* 48 kHz, 16 bit, mono */
#define TAG		1
#endif

#define FMT_OUT		0x0010		/* the converters' formats */
#define FMT_IN		0x0510

#define GCAP		0x00
#define GCTL		0x08
#define STATESTS	0x0e
#define INTCTL		0x20
#define INTSTS		0x24
#define CORBLBASE	0x40
#define CORBUBASE	0x44
#define CORBWP		0x48
#define CORBRP		0x4a
#define CORBCTL		0x4c
#define CORBSIZE	0x4e
#define RIRBLBASE	0x50
#define RIRBUBASE	0x54
#define RIRBWP		0x58
#define RINTCNT		0x5a
#define RIRBCTL		0x5c
#define RIRBSTS		0x5d
#define DPLBASE		0x70
#define DPUBASE		0x74
#define SD_CTL		0x00
#define SD_STS		0x03
#define SD_LPIB		0x04
#define SD_CBL		0x08
#define SD_LVI		0x0c
#define SD_FMT		0x12
#define SD_BDPL		0x18
#define SD_BDPU		0x1c

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
	cmp $0x293e8086, %eax
	je 2f
	inc %ebx
	cmp $32, %ebx
	jb 1b
	mov $s_nohda, %esi
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
	mov %eax, %ebp
	mov $4, %ecx
	call pci_read
	or $6, %ax			/* memory space, bus master */
	out %ax, %dx
	mov $s_found, %esi
	call puts
	mov %ebx, %eax
	call puthex8
	call newline

	/* Controller reset: CRST low, then high, then codec 0 reports in. */
	movl $0, GCTL(%ebp)
	mov $SPINS, %ecx
1:	testl $1, GCTL(%ebp)
	jz 2f
	loop 1b
	mov $s_noreset, %esi
	jmp fail
2:	movl $1, GCTL(%ebp)
	mov $SPINS, %ecx
1:	testl $1, GCTL(%ebp)
	jnz 2f
	loop 1b
	mov $s_noreset, %esi
	jmp fail
2:	mov $SPINS, %ecx
1:	testw $1, STATESTS(%ebp)
	jnz 2f
	loop 1b
	mov $s_nocodec, %esi
	jmp fail
2:	mov $s_gcap, %esi
	call puts
	movzwl GCAP(%ebp), %eax
	call puthex16
	mov $s_statests, %esi
	call puts
	movzwl STATESTS(%ebp), %eax
	call puthex16
	call newline
	movw $1, STATESTS(%ebp)

	/* CORB and RIRB, 256 entries each. */
	movb $0, CORBCTL(%ebp)
	movb $0, RIRBCTL(%ebp)
	movl $CORB, CORBLBASE(%ebp)
	movl $0, CORBUBASE(%ebp)
	movb $2, CORBSIZE(%ebp)
	movw $0x8000, CORBRP(%ebp)	/* CORBRPRST: reads back set, then clear it */
	mov $SPINS, %ecx
1:	testw $0x8000, CORBRP(%ebp)
	jnz 2f
	loop 1b
	mov $s_norprst, %esi
	jmp fail
2:	movw $0, CORBRP(%ebp)
	movw $0, CORBWP(%ebp)
	movl $RIRB, RIRBLBASE(%ebp)
	movl $0, RIRBUBASE(%ebp)
	movw $0x8000, RIRBWP(%ebp)	/* RIRBWPRST */
	movw $1, RINTCNT(%ebp)
	movb $3, RIRBCTL(%ebp)		/* DMA on, RINTFL after each answer (INTCTL stays 0) */
	movb $2, CORBCTL(%ebp)		/* run */

	/* MSI on: the first answer must interrupt. */
	call msi_setup
	cli
	movl $0xc0000000, INTCTL(%ebp)	/* GIE, CIE */
	mov $0x000f0000, %eax		/* root: vendor id */
	call verb
	mov %eax, vendor
	mov $SPINS, %ecx
	sti
1:	cmpl $0, got_msi		/* the handler jumps to msi_done */
	loop 1b
	cli
	mov $s_nomsi, %esi
	jmp fail
msi_done:
	movl $0, INTCTL(%ebp)
	mov $s_msi, %esi
	call puts

	/* Codec identity and its audio function group. */
	mov vendor, %eax
	mov $s_vendor, %esi
	call puts
	call puthex32
	call newline
	mov $0x000f0004, %eax		/* root: subordinate nodes */
	call verb
	shr $16, %eax
	mov %eax, afg
	shl $20, %eax
	or $0x000f0004, %eax		/* function group: its widgets */
	call verb
	mov %eax, %edi
	mov $s_afg, %esi
	call puts
	call puthex32
	call newline
	mov %edi, %eax
	shr $16, %eax
	mov %eax, first
	and $0xff, %edi
	add %eax, %edi
	mov %edi, last

	/* Each widget: capabilities, pin capabilities, amp caps, connections, defaults. */
	mov first, %ebx
3:	cmp last, %ebx
	jae 9f
	mov $s_widget, %esi
	call puts
	mov %ebx, %eax
	call puthex8
	mov $s_caps, %esi
	call puts
	mov $0xf0009, %eax
	call node_verb
	call puthex32
	mov %eax, %edi
	shr $20, %edi
	and $0xf, %edi			/* widget type */
	mov $s_pincaps, %esi
	call puts
	mov $0xf000c, %eax
	call node_verb
	call puthex32
	mov %eax, pincaps
	mov $s_amp, %esi
	call puts
	mov $0xf0012, %eax		/* output amp */
	cmp $1, %edi
	jne 4f
	mov $0xf000d, %eax		/* input amp, for an input converter */
4:	call node_verb
	call puthex32
	and $0x7f, %eax			/* the 0 dB step */
	mov %eax, offset0
	mov $s_conn, %esi
	call puts
	mov $0xf0200, %eax		/* connection list entries 0..3 */
	call node_verb
	call puthex32
	mov $s_config, %esi
	call puts
	mov $0xf1c00, %eax
	call node_verb
	call puthex32
	call newline
	/* Set it up by type. */
	cmp $0, %edi
	jne 5f
	cmpl $0, dac
	jne 8f
	mov %ebx, dac
	mov $(0x70600 | (1 << 4)), %eax	/* stream tag 1, channel 0 */
	call node_verb
	mov $(0x20000 | FMT_OUT), %eax
	call node_verb
	mov $0x3b000, %eax		/* output amp, both sides, unmuted */
	or offset0, %eax
	call node_verb
	jmp 8f
5:	cmp $1, %edi
	jne 6f
	cmpl $0, adc
	jne 8f
	mov %ebx, adc
	mov $(0x70600 | (2 << 4)), %eax	/* stream tag 2, channel 0 */
	call node_verb
	mov $(0x20000 | FMT_IN), %eax
	call node_verb
	mov $0x37000, %eax		/* input amp 0, both sides, unmuted */
	or offset0, %eax
	call node_verb
	jmp 8f
6:	cmp $4, %edi
	jne 8f
	mov $0x70740, %eax		/* pin: out enable */
	testl $0x10, pincaps
	jnz 7f
	mov $0x70720, %eax		/* pin: in enable */
7:	call node_verb
8:	inc %ebx
	jmp 3b
9:	mov $s_nodac, %esi
	cmpl $0, dac
	je fail
	mov $s_noadc, %esi
	cmpl $0, adc
	je fail

	/* The stream: reset it, then its BDL, length, format and tag. */
	movb $1, SD+SD_CTL(%ebp)
	mov $SPINS, %ecx
1:	testb $1, SD+SD_CTL(%ebp)
	jnz 2f
	loop 1b
	mov $s_nosrst, %esi
	jmp fail
2:	movb $0, SD+SD_CTL(%ebp)
	mov $SPINS, %ecx
1:	testb $1, SD+SD_CTL(%ebp)
	jz 2f
	loop 1b
	mov $s_nosrst, %esi
	jmp fail
2:	xor %ecx, %ecx
1:	mov %ecx, %eax
	imul $PERIOD, %eax
	add $BUF, %eax
	mov %ecx, %edx
	shl $4, %edx
	mov %eax, BDL(%edx)
	movl $0, BDL+4(%edx)
	movl $PERIOD, BDL+8(%edx)
	movl $1, BDL+12(%edx)		/* IOC */
	inc %ecx
	cmp $4, %ecx
	jb 1b
	movl $BDL, SD+SD_BDPL(%ebp)
	movl $0, SD+SD_BDPU(%ebp)
	movl $(4 * PERIOD), SD+SD_CBL(%ebp)
	movw $3, SD+SD_LVI(%ebp)
	movw $FMT, SD+SD_FMT(%ebp)
	movb $(TAG << 4), SD+SD_CTL+2(%ebp)
	movl $(POSBUF | 1), DPLBASE(%ebp)
	movl $0, DPUBASE(%ebp)
#if !defined(CAPTURE) && !defined(MARK)
	call fill_square
#endif
	movb $6, SD+SD_CTL(%ebp)	/* RUN, IOCE */
	mov $s_running, %esi
	call puts

	/* One buffer completion after another. */
	xor %edi, %edi			/* completions */
#ifdef CAPTURE
	xor %ebx, %ebx			/* counted (non-silent) periods */
#endif
1:	mov $SPINS, %ecx
2:	testb $4, SD+SD_STS(%ebp)	/* BCIS */
	jnz 3f
	loop 2b
	mov $s_nobcis, %esi
	jmp fail
3:	movb $4, SD+SD_STS(%ebp)
	mov INTSTS(%ebp), %eax		/* read, not needed: status is polled */
#ifdef CAPTURE
	/* Every entry wholly behind the DMA's position is new (one BCIS may stand for
	 * several entries completed in one pass). */
	mov SD+SD_LPIB(%ebp), %eax
	xor %edx, %edx
	mov $PERIOD, %ecx
	div %ecx			/* the entry the DMA is in */
	mov %eax, cur
8:	mov next, %eax
	cmp cur, %eax
	je 1b
	imul $PERIOD, %eax, %esi
	add $BUF, %esi
	incl next
	andl $3, next
	call analyse
	cmp $1000, %edx
	jb 8b				/* silence: not counted */
	add %eax, crossings
	inc %ebx
	cmp $19, %eax
	jb 4f
	cmp $21, %eax
	ja 4f
	incl clean
4:	cmp peak, %edx
	jbe 5f
	mov %edx, peak
5:	cmp $PERIODS, %ebx
	jb 8b
#else
	inc %edi
#ifdef MARK
	cmp $MARK, %edi
	jne 4f
	call fill_square
	mov $s_tone, %esi
	call puts
4:
#endif
	cmp $PERIODS, %edi
	jb 1b
#endif
	/* The position buffer follows LPIB (both move, so allow one period apart). */
	mov SD+SD_LPIB(%ebp), %eax
	sub POSBUF+8*SD_INDEX, %eax
	jns 6f
	neg %eax
6:	cmp $PERIOD, %eax
	jbe 7f
	cmp $(3 * PERIOD), %eax		/* apart across the wrap */
	jae 7f
	mov $s_posbuf, %esi
	jmp fail
7:	movb $0, SD+SD_CTL(%ebp)	/* stop */
#ifdef CAPTURE
	mov $s_captured, %esi
	call puts
	mov %ebx, %eax
	call putdec
	mov $s_crossings, %esi
	call puts
	mov crossings, %eax
	call putdec
	mov $s_clean, %esi
	call puts
	mov clean, %eax
	call putdec
	mov $s_peak, %esi
	call puts
	mov peak, %eax
	call putdec
#else
	mov $s_played, %esi
	call puts
	mov %edi, %eax
	call putdec
	mov $s_periods, %esi
	call puts
#endif
	call newline
	jmp acpi_poweroff

/* verb: send command %eax through the CORB, wait for its answer in the RIRB (%eax). */
verb:
	push %ecx
	push %edx
	movzwl CORBWP(%ebp), %edx
	inc %edx
	and $0xff, %edx
	mov %eax, CORB(,%edx,4)
	movzwl RIRBWP(%ebp), %ecx
	mov %ecx, rirb_wp
	movw %dx, CORBWP(%ebp)
	mov $SPINS, %ecx
1:	movzwl RIRBWP(%ebp), %eax
	cmp rirb_wp, %eax
	jne 2f
	loop 1b
	mov $s_noanswer, %esi
	jmp fail
2:	movb $5, RIRBSTS(%ebp)
	mov RIRB(,%eax,8), %eax
	pop %edx
	pop %ecx
	ret

/* msi_setup: the IDT gate for vector 0x25, the LAPIC on, PICs masked, and the
 * function's MSI capability pointed at APIC 0 with vector 0x25 and enabled. */
msi_setup:
	mov $msi_handler, %eax
	mov %ax, idt + 0x25 * 8
	movw $0x10, idt + 0x25 * 8 + 2	/* boot code selector */
	movw $0x8e00, idt + 0x25 * 8 + 4	/* present, 32-bit interrupt gate */
	shr $16, %eax
	mov %ax, idt + 0x25 * 8 + 6
	lidt idt_desc
	mov $0xff, %al
	out %al, $0x21
	out %al, $0xa1
	movl $0x1ff, 0xfee000f0		/* LAPIC software-enabled */
	mov $0x34, %ecx			/* capabilities pointer */
	call pci_read
1:	and $0xfc, %eax
	mov $s_nomsicap, %esi
	jz fail
	mov %eax, %edi
	mov %edi, %ecx
	call pci_read
	cmp $0x05, %al
	je 2f
	shr $8, %eax
	jmp 1b
2:	mov $s_msi32, %esi
	test $0x00800000, %eax		/* 64-bit address capable: data at +12 */
	jz fail
	lea 4(%edi), %ecx
	mov $0xfee00000, %eax
	call pci_write
	lea 8(%edi), %ecx
	xor %eax, %eax
	call pci_write
	lea 12(%edi), %ecx
	mov $0x25, %eax
	call pci_write
	mov %edi, %ecx
	call pci_read
	or $0x00010000, %eax		/* MSI enable */
	mov %edi, %ecx
	jmp pci_write

msi_handler:
	movl $1, got_msi
	movl $0, 0xfee000b0		/* LAPIC EOI */
	movb $5, RIRBSTS(%ebp)
	mov $stack_top, %esp		/* drop the interrupt frame */
	jmp msi_done

/* node_verb: verb %eax (20 bits) to node %ebx of codec 0. */
node_verb:
	push %ebx
	shl $20, %ebx
	or %ebx, %eax
	pop %ebx
	jmp verb

#ifdef CAPTURE
#include "tone.S"
#else
/* fill_square: the cyclic buffer (4 periods) as a 1 kHz square wave at 48 kHz; keeps
 * every register. */
fill_square:
	pusha
	mov $BUF, %edi
	mov $(4 * PERIOD / 96), %edx	/* 48-sample square periods */
1:	mov $24, %ecx
	mov $8000, %eax
	rep stosw
	mov $24, %ecx
	mov $-8000, %eax
	rep stosw
	dec %edx
	jnz 1b
	popa
	ret
#endif

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

/* pci_write: %eax into configuration dword %ecx of bus 0 device %ebx. */
pci_write:
	push %edx
	push %eax
	mov %ebx, %eax
	shl $11, %eax
	or %ecx, %eax
	or $0x80000000, %eax
	mov $0xcf8, %dx
	out %eax, %dx
	pop %eax
	mov $0xcfc, %dx
	out %eax, %dx
	pop %edx
	ret

newline:
	push %eax
	mov $'\n', %al
	call putc
	pop %eax
	ret

/* fail: "FAILED: " + %esi, then power off. */
fail:
	push %esi
	mov $s_failed, %esi
	call puts
	pop %esi
	call puts
	call newline
	jmp acpi_poweroff

#include "hex.S"
#include "lib.S"

	.section .rodata
	.align 8
idt_desc:	.word 256 * 8 - 1
		.long idt
s_msi:		.asciz "msi: rirb interrupt on vector 0x25\n"
s_nomsi:	.asciz "no MSI for the RIRB answer"
s_nomsicap:	.asciz "no MSI capability"
s_msi32:	.asciz "MSI capability without 64-bit addresses"
s_found:	.asciz "hda 00:"
s_gcap:		.asciz "hda gcap "
s_statests:	.asciz " statests "
s_vendor:	.asciz "codec vendor "
s_afg:		.asciz "afg nodes "
s_widget:	.asciz "widget "
s_caps:		.asciz " caps "
s_pincaps:	.asciz " pincaps "
s_amp:		.asciz " amp "
s_conn:		.asciz " conn "
s_config:	.asciz " config "
s_running:	.asciz "stream running\n"
s_tone:		.asciz "tone\n"
s_played:	.asciz "played "
s_periods:	.asciz " periods"
s_captured:	.asciz "captured "
s_crossings:	.asciz " periods crossings "
s_clean:	.asciz " clean "
s_peak:		.asciz " peak "
s_failed:	.asciz "FAILED: "
s_nohda:	.asciz "no hda 8086:293e on bus 0"
s_bar64:	.asciz "bar0 above 4 GiB"
s_nobar:	.asciz "bar0 not assigned"
s_noreset:	.asciz "controller reset does not finish"
s_nocodec:	.asciz "no codec in STATESTS"
s_norprst:	.asciz "CORBRP reset does not read back"
s_noanswer:	.asciz "no answer in the RIRB"
s_nodac:	.asciz "no output converter"
s_noadc:	.asciz "no input converter"
s_nosrst:	.asciz "stream reset does not read back"
s_nobcis:	.asciz "no buffer completion"
s_posbuf:	.asciz "position buffer does not follow LPIB"

	.data
	.align 4
afg:		.long 0
first:		.long 0
last:		.long 0
pincaps:	.long 0
offset0:	.long 0
dac:		.long 0
adc:		.long 0
rirb_wp:	.long 0
crossings:	.long 0
clean:		.long 0
peak:		.long 0
hstate:		.long 0
vendor:		.long 0
got_msi:	.long 0
cur:		.long 0
next:		.long 0

	.bss
	.align 16
idt:	.space 256 * 8
	.space 4096
stack_top:
