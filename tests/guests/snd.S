/* virtio-snd guest: a minimal polling driver for the modern virtio-pci sound card.
 *
 * It finds 1af4:1059 on bus 0, negotiates VERSION_1, sets up the control, event, transmit
 * and receive queues (eight entries each) and asks for the card's configuration and
 * stream info ("snd jacks J streams S chmaps C", "snd pcm0 dir D ch A-B").
 * By default it plays: stream 0 as mono S16 at 48 kHz, PERIODS periods of 10 ms of a
 * 1 kHz square wave (24 samples high, 24 low), four periods in flight; the device returns
 * each period once the host played it, so this takes real time. Then it stops and
 * releases the stream, prints "played N periods" and powers off. With -DMARK=M the first
 * M periods are silence and "tone" is printed as the first tone period is queued (the
 * benchmark's latency mark).
 * With -DCAPTURE it records from stream 1 as mono S16 at 8 kHz (10 ms periods, few
 * samples to look at for this slow guest), skips silent periods, and
 * over the next PERIODS periods counts zero crossings (with hysteresis), the periods
 * with 19..21 of them (a clean 1 kHz tone crosses 20 times in 10 ms) and the peak; it
 * prints "captured N periods crossings C clean K peak P" and powers off.
 *
 * As in net.S, BAR0's layout is fixed (common config 0x0, device config 0x2000, notify
 * 0x3000 + 4 * queue); no interrupts, the used rings are polled. */
#include "pvh_note.S"

#define CTL	0x400000	/* per queue: descriptors +0, avail +0x100, used +0x200 */
#define EVT	0x401000
#define TXQ	0x402000
#define RXQ	0x403000
#define REQ	0x410000	/* control request */
#define RESP	0x410100	/* control response */
#define PCM	0x420000	/* transmit: stream id, then one period */
#define STATUS	0x421000	/* 4 x 8-byte status */
#define CAP	0x430000	/* receive: 4 x (period + status), 0x1000 apart */
#define QSIZE	8
#ifdef CAPTURE
#define PERIOD	160		/* 80 frames of mono S16: 10 ms at 8 kHz (the guest is slow) */
#define RATE	1		/* 8 kHz */
#else
#define PERIOD	960		/* 480 frames of mono S16: 10 ms at 48 kHz */
#define RATE	7		/* 48 kHz */
#endif
#ifndef PERIODS
#define PERIODS	150
#endif

	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	mov $0x10591af4, %edi
	call find_virtio
	test %ebx, %ebx
	jnz 1f
	mov $s_nosnd, %esi
	call puts
	jmp acpi_poweroff
1:	movb $0, 0x14(%ebx)
	movb $1, 0x14(%ebx)
	movb $3, 0x14(%ebx)
	movl $0, 0x08(%ebx)
	movl $0, 0x0c(%ebx)
	movl $1, 0x08(%ebx)
	movl $1, 0x0c(%ebx)		/* VIRTIO_F_VERSION_1 */
	movb $0xb, 0x14(%ebx)
	xor %eax, %eax
	mov $CTL, %ecx
	call setup_queue
	mov $1, %eax
	mov $EVT, %ecx
	call setup_queue
	mov $2, %eax
	mov $TXQ, %ecx
	call setup_queue
	mov $3, %eax
	mov $RXQ, %ecx
	call setup_queue
	movb $0xf, 0x14(%ebx)		/* DRIVER_OK */

	/* Configuration: jacks, streams, chmaps. */
	mov $s_cfg, %esi
	call puts
	mov 0x2000(%ebx), %eax
	call putdec
	mov $s_streams, %esi
	call puts
	mov 0x2004(%ebx), %eax
	call putdec
	mov $s_chmaps, %esi
	call puts
	mov 0x2008(%ebx), %eax
	call putdec
	mov $'\n', %al
	call putc

	/* PCM_INFO for stream 0: { code, start 0, count 1, size 32 }. */
	movl $0x100, REQ
	movl $0, REQ+4
	movl $1, REQ+8
	movl $32, REQ+12
	mov $16, %ecx
	mov $36, %edx
	call control
	mov $s_pcm0, %esi
	call puts
	movzbl RESP+4+24, %eax		/* direction */
	call putdec
	mov $s_ch, %esi
	call puts
	movzbl RESP+4+25, %eax
	call putdec
	mov $'-', %al
	call putc
	movzbl RESP+4+26, %eax
	call putdec
	mov $'\n', %al
	call putc

#ifdef CAPTURE
	mov $1, %edi
#else
	xor %edi, %edi
#endif
	/* SET_PARAMS: { 0x101, stream, buffer 4 periods, period, features 0, 1 channel,
	 * S16 (5), RATE }. */
	movl $0x101, REQ
	movl %edi, REQ+4
	movl $(4 * PERIOD), REQ+8
	movl $PERIOD, REQ+12
	movl $0, REQ+16
	movl $(0x0501 | RATE << 16), REQ+20
	mov $24, %ecx
	call pcm_command
	movl $0x102, REQ		/* PREPARE */
	mov $8, %ecx
	call pcm_command
	movl $0x104, REQ		/* START */
	call pcm_command

#ifdef CAPTURE
	jmp capture
#endif

	/* One period behind stream id 0, used by every request: the square wave (with
	 * MARK, silence until period MARK). */
	movl $0, PCM
#ifndef MARK
	call fill_square
#endif
	/* Descriptors 2k (PCM, readable) -> 2k+1 (status k, writable), k = 0..3. */
	xor %ecx, %ecx
4:	mov %ecx, %eax
	shl $5, %eax			/* 2 descriptors of 16 bytes */
	movl $PCM, TXQ(%eax)
	movl $0, TXQ+4(%eax)
	movl $(PERIOD + 4), TXQ+8(%eax)
	lea 1(,%ecx,2), %edx
	movw $1, TXQ+12(%eax)		/* NEXT */
	movw %dx, TXQ+14(%eax)
	lea STATUS(,%ecx,8), %edx
	movl %edx, TXQ+16(%eax)
	movl $0, TXQ+20(%eax)
	movl $8, TXQ+24(%eax)
	movw $2, TXQ+28(%eax)		/* WRITE */
	inc %ecx
	cmp $4, %ecx
	jb 4b
	xor %edi, %edi			/* periods published */
5:	movzwl TXQ+0x202, %eax		/* periods played */
	cmp $PERIODS, %eax
	jae 7f
	mov %edi, %edx
	sub %eax, %edx
	cmp $4, %edx
	jae 6f
	cmp $PERIODS, %edi
	jae 6f
#ifdef MARK
	cmp $MARK, %edi
	jne 8f
	call fill_square
	mov $s_tone, %esi
	call puts
8:
#endif
	mov %edi, %eax
	and $3, %eax
	shl $1, %eax			/* head descriptor 2k */
	mov %edi, %edx
	and $(QSIZE - 1), %edx
	movw %ax, TXQ+0x104(,%edx,2)
	inc %edi
	movw %di, TXQ+0x102
	movw $2, 0x3008(%ebx)		/* notify queue 2 */
	jmp 5b
6:	pause
	jmp 5b
7:	xor %edi, %edi
	movl $0x105, REQ		/* STOP */
	mov $8, %ecx
	call pcm_command
	movl $0x103, REQ		/* RELEASE */
	call pcm_command
	mov $s_played, %esi
	call puts
	mov $PERIODS, %eax
	call putdec
	mov $s_periods, %esi
	call puts
	jmp acpi_poweroff

#ifdef CAPTURE
capture:
	/* Descriptors 2k (stream id 1, readable) -> 2k+1 (period + status k, writable). */
	movl $1, PCM
	xor %ecx, %ecx
1:	mov %ecx, %eax
	shl $5, %eax			/* 2 descriptors of 16 bytes */
	movl $PCM, RXQ(%eax)
	movl $0, RXQ+4(%eax)
	movl $4, RXQ+8(%eax)
	lea 1(,%ecx,2), %edx
	movw $1, RXQ+12(%eax)		/* NEXT */
	movw %dx, RXQ+14(%eax)
	mov %ecx, %edx
	shl $12, %edx
	add $CAP, %edx
	movl %edx, RXQ+16(%eax)
	movl $0, RXQ+20(%eax)
	movl $(PERIOD + 8), RXQ+24(%eax)
	movw $2, RXQ+28(%eax)		/* WRITE */
	lea (,%ecx,2), %edx
	movw %dx, RXQ+0x104(,%ecx,2)	/* all four published */
	inc %ecx
	cmp $4, %ecx
	jb 1b
	movl $4, rx_avail
	movw $4, RXQ+0x102
	movw $3, 0x300c(%ebx)		/* notify queue 3 */
	xor %ebp, %ebp			/* counted periods */
2:	movzwl RXQ+0x202, %eax
	cmpw rx_seen, %ax
	je 2b
	movzwl rx_seen, %eax
	and $(QSIZE - 1), %eax
	mov RXQ+0x204(,%eax,8), %edi	/* head 2k */
	incw rx_seen
	shr $1, %edi			/* k */
	mov %edi, %esi
	shl $12, %esi
	add $CAP, %esi
	call analyse			/* %eax = crossings, %edx = peak */
	cmp $1000, %edx
	jb 3f				/* silence: not counted */
	add %eax, crossings
	inc %ebp
	cmp $19, %eax			/* a clean 1 kHz period: 19..21 crossings */
	jb 5f
	cmp $21, %eax
	ja 5f
	incl clean
5:	cmp peak, %edx
	jbe 3f
	mov %edx, peak
3:	/* Give the buffer back. */
	mov rx_avail, %eax
	mov %eax, %edx
	and $(QSIZE - 1), %edx
	lea (,%edi,2), %ecx
	movw %cx, RXQ+0x104(,%edx,2)
	inc %eax
	mov %eax, rx_avail
	movw %ax, RXQ+0x102
	movw $3, 0x300c(%ebx)
	cmp $PERIODS, %ebp
	jb 2b
	mov $1, %edi
	movl $0x105, REQ		/* STOP */
	mov $8, %ecx
	call pcm_command
	movl $0x103, REQ		/* RELEASE */
	call pcm_command
	mov $s_captured, %esi
	call puts
	mov %ebp, %eax
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
	mov $'\n', %al
	call putc
	jmp acpi_poweroff

#include "tone.S"
#endif

/* fill_square: one period of a 1 kHz square wave at 48 kHz (24 samples at +8000, 24 at
 * -8000) into PCM+4. */
fill_square:
	push %esi
	xor %ecx, %ecx
1:	mov %ecx, %eax
	xor %edx, %edx
	mov $48, %esi
	div %esi			/* %edx = position in the 48-sample cycle */
	mov $8000, %ax
	cmp $24, %edx
	jb 2f
	mov $-8000, %ax
2:	movw %ax, PCM+4(,%ecx,2)
	inc %ecx
	cmp $(PERIOD / 2), %ecx
	jb 1b
	pop %esi
	ret

/* control: sends the %ecx-byte request at REQ, waits for the %edx-byte response at RESP;
 * %eax = its status. */
control:
	movl $REQ, CTL
	movl $0, CTL+4
	movl %ecx, CTL+8
	movw $1, CTL+12
	movw $1, CTL+14
	movl $RESP, CTL+16
	movl $0, CTL+20
	movl %edx, CTL+24
	movw $2, CTL+28
	movzwl ctl_avail, %eax
	mov %eax, %ecx
	and $(QSIZE - 1), %ecx
	movw $0, CTL+0x104(,%ecx,2)
	inc %eax
	movw %ax, ctl_avail
	movw %ax, CTL+0x102
	movw $0, 0x3000(%ebx)		/* notify queue 0 */
1:	cmpw CTL+0x202, %ax
	jne 1b
	mov RESP, %eax
	ret

/* pcm_command: the %ecx-byte PCM request at REQ for stream %edi; prints
 * "snd command C failed S" unless the status is OK. */
pcm_command:
	push %ecx
	movl %edi, REQ+4
	mov $4, %edx
	call control
	pop %ecx
	cmp $0x8000, %eax
	je 1f
	push %eax
	mov $s_cmd, %esi
	call puts
	mov REQ, %eax
	call putdec
	mov $s_failed, %esi
	call puts
	pop %eax
	call putdec
	mov $'\n', %al
	call putc
1:	ret

#include "virtio.S"
#include "lib.S"

	.data
	.align 4
ctl_avail:	.long 0
rx_avail:	.long 0
rx_seen:	.long 0
crossings:	.long 0
peak:		.long 0
hstate:		.long 0
clean:		.long 0

	.section .rodata
s_nosnd:	.asciz "no virtio-snd card\n"
s_cfg:		.asciz "snd jacks "
s_streams:	.asciz " streams "
s_chmaps:	.asciz " chmaps "
s_pcm0:		.asciz "snd pcm0 dir "
s_ch:		.asciz " ch "
s_cmd:		.asciz "snd command "
s_failed:	.asciz " failed "
s_tone:		.asciz "tone\n"
s_played:	.asciz "played "
s_periods:	.asciz " periods\n"
s_captured:	.asciz "captured "
s_crossings:	.asciz " periods crossings "
s_clean:	.asciz " clean "
s_peak:		.asciz " peak "

	.bss
	.align 16
	.space 4096
stack_top:
